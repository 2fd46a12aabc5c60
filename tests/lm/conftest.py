"""Fixtures: a real OpenAI-compatible HTTP server on 127.0.0.1 inside the test process, and
LMClients wired to it whose HTTP connections are closed when the test ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from flowbot.lm import LMClient
from flowbot.testing import OpenAITestServer

from .lm_helpers import FAKE_KEY, KEY_ENV, make_client


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(reply=lambda body, i: f"answer {i}") as srv:
        yield srv


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    return KEY_ENV


@pytest.fixture
async def connect() -> AsyncIterator:
    """``connect(server, **kw)`` → an LMClient over OpenAICompatProvider (see make_client)."""
    made: list[LMClient] = []

    def factory(server: OpenAITestServer, **kw) -> LMClient:
        made.append(make_client(server, **kw))
        return made[-1]

    yield factory
    for lm in made:
        await lm.provider.aclose()

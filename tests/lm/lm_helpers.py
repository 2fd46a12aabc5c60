"""Helpers for the LM tests: a recording retry policy and clients wired to the test server."""

from __future__ import annotations

import random

from flowbot.lm import LMClient, RetryPolicy
from flowbot.lm.openai_compat import OpenAICompatProvider
from flowbot.testing import OpenAITestServer

FAKE_KEY = "sk-test-SECRET-0123456789abcdef"
KEY_ENV = "FLOWBOT_TEST_API_KEY"


class RecordingPolicy(RetryPolicy):
    """The real RetryPolicy; it also remembers each computed wait and the error behind it."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.waits: list[tuple[int, float | None, float]] = []  # (attempt, retry_after, wait)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wait = super().delay(attempt, retry_after)
        self.waits.append((attempt, retry_after, wait))
        return wait


def fast_policy(**kw) -> RecordingPolicy:
    # a generous attempt timeout: a loaded CI machine is slow, and only the timeout tests mean to time out
    args = dict(max_attempts=4, base_delay=0.01, max_delay=1.0, attempt_timeout=30.0,
                rng=random.Random(0))
    args.update(kw)
    return RecordingPolicy(**args)


def make_client(server: OpenAITestServer, *, model: str = "test-model", policy: RetryPolicy | None = None,
                key_env: str = KEY_ENV, http_backend: str = "httpx", **client_kw) -> LMClient:
    provider = OpenAICompatProvider(model, base_url=server.base_url, api_key_env=key_env, timeout=5.0,
                                    http_backend=http_backend)  # type: ignore[arg-type]
    return LMClient(provider, retry=policy or fast_policy(), **client_kw)


def has_aiohttp() -> bool:
    import importlib.util

    return importlib.util.find_spec("aiohttp") is not None


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]

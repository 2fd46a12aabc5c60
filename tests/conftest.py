"""Test-wide isolation: a private FlowBot home (caches, models dir) and no provider keys, so the
default-model rules and the response cache never depend on the machine running the tests.

Real-model tests (marked ``realmodel``) keep the machine's models directory, so the embedded model
is fetched once per machine, not once per test session."""

from __future__ import annotations


import pytest

PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "MISTRAL_API_KEY", "FLOWBOT_MODEL",
                 "FLOWBOT_BASE_URL")


@pytest.fixture(autouse=True)
def _isolated_flowbot_home(tmp_path_factory, monkeypatch, request):
    if request.node.get_closest_marker("realmodel") is None:
        home = tmp_path_factory.mktemp("flowbot_home")
        monkeypatch.setenv("FLOWBOT_HOME", str(home))
        monkeypatch.delenv("FLOWBOT_MODELS_DIR", raising=False)
    monkeypatch.delenv("FLOWBOT_CACHE", raising=False)
    for key in PROVIDER_KEYS:
        monkeypatch.delenv(key, raising=False)
    yield

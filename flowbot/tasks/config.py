"""Task description files (YAML or TOML) → keyword arguments of :class:`flowbot.tasks.Task`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from flowbot.errors import read_text_file
from flowbot.tasks.loaders import DataError

_KEYS = {"name", "data", "train", "val", "test", "inputs", "targets", "target", "metric", "split", "seed",
         "output", "labels", "description", "extract", "tools", "context_fields"}
_PATH_KEYS = ("data", "train", "val", "test")


def _read(path: Path) -> dict[str, Any]:
    text = read_text_file(path, "task file", DataError)
    if path.suffix.lower() == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise DataError(f"{path}: invalid TOML ({exc})") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of task settings")
    return data


def load_task_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such task file")
    data = _read(path)
    unknown = set(data) - _KEYS
    if unknown:
        raise DataError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    if "target" in data:
        data["targets"] = data.pop("target")
    for key in ("inputs", "targets"):
        if key not in data:
            raise DataError(f"{path}: missing required key {key!r}")
    for key in _PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and not value.startswith("hf:") and not Path(value).is_absolute():
            data[key] = str((path.parent / value).resolve())
    metric = data.get("metric")
    if isinstance(metric, str) and ".py:" in metric and not Path(metric.split(":")[0]).is_absolute():
        file, func = metric.rsplit(":", 1)
        data["metric"] = f"{(path.parent / file).resolve()}:{func}"
    if "split" in data:
        data["split"] = tuple(data["split"])
    data.setdefault("name", path.stem)
    return data

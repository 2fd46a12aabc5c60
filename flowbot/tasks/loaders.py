"""Reading rows from JSONL, JSON, CSV, Parquet (optionally gzipped) or Hugging Face, keeping each
row's file and line so a bad row can be reported exactly.

    >>> rows = read_rows([{"q": "1+1", "a": "2"}])
    >>> rows[0].data, rows[0].where
    ({'q': '1+1', 'a': '2'}, 'row 1')
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from flowbot.errors import FlowBotError, utf8_text


class DataError(FlowBotError):
    """Bad input data; the message names the file and line (or row) and the field."""


@dataclass
class Row:
    data: dict[str, Any]
    where: str  # "train.jsonl, line 12" — for error messages
    index: int  # 0-based position in its source


def _open_text(path: Path) -> io.StringIO:
    """The file's text (gunzipped), decoded as UTF-8 with a leading byte-order mark dropped;
    a DataError naming the line for bytes that are not UTF-8."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    return io.StringIO(utf8_text(data, str(path), DataError), newline="")


def _base_suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def read_file(path: str | Path) -> list[Row]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    rows = _read_kind(path)
    if not rows:
        raise DataError(f"{path}: the file has no examples")
    return rows


def _read_kind(path: Path) -> list[Row]:
    kind = _base_suffix(path)
    if kind == ".jsonl":
        return _read_jsonl(path)
    if kind == ".json":
        return _read_json(path)
    if kind in (".csv", ".tsv"):
        return _read_csv(path, "\t" if kind == ".tsv" else ",")
    if kind == ".parquet":
        return _read_parquet(path)
    raise DataError(f"{path}: unsupported file type {kind or '(none)'}; use .jsonl, .json, .csv, .tsv or .parquet")


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with _open_text(path) as fh:
        # Split on "\n" only: str.splitlines() would also break at U+0085 inside a string.
        for lineno, line in enumerate(fh.read().split("\n"), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(data, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(data).__name__}")
            rows.append(Row(data, f"{path}, line {lineno}", len(rows)))
    return rows


def _read_json(path: Path) -> list[Row]:
    with _open_text(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        # {"data": [...]} or {"examples": [...]} wrappers are common
        for key in ("data", "examples", "rows"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"{path}, item {i + 1}: expected a JSON object, got {type(item).__name__}")
        rows.append(Row(item, f"{path}, item {i + 1}", i))
    return rows


def _read_csv(path: Path, delimiter: str) -> list[Row]:
    with _open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        rows = []
        for rec in reader:
            if None in rec:
                raise DataError(f"{path}, line {reader.line_num}: more values than header columns")
            rows.append(Row(dict(rec), f"{path}, line {reader.line_num}", len(rows)))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'flowbot[parquet]'") from None
    table = pq.read_table(path)
    return [Row(rec, f"{path}, row {i + 1}", i) for i, rec in enumerate(table.to_pylist())]


def read_hf(spec: str) -> list[Row]:
    """``hf:name[:config][@split]`` from the Hugging Face hub (needs ``datasets`` and a network)."""
    body = spec[3:] if spec.startswith("hf:") else spec
    split = "train"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(f"{spec}: loading from Hugging Face needs `pip install 'flowbot[hf]'`") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # network, auth, missing config: all become one clear message
        raise DataError(f"{spec}: could not load from Hugging Face ({type(exc).__name__}: {exc})") from None
    return [Row(dict(rec), f"{spec}, row {i + 1}", i) for i, rec in enumerate(ds)]


def read_rows(source: Any) -> list[Row]:
    """Rows from a list of dicts, a path, or an ``hf:`` spec."""
    if isinstance(source, (str, Path)):
        text = str(source)
        if text.startswith("hf:"):
            return read_hf(text)
        return read_file(source)
    if isinstance(source, Iterable):
        rows = []
        for i, item in enumerate(source):
            if not isinstance(item, dict):
                raise DataError(f"row {i + 1}: expected a dict, got {type(item).__name__}")
            rows.append(Row(dict(item), f"row {i + 1}", i))
        return rows
    raise DataError(f"cannot read examples from {type(source).__name__}")


def parse_jsonish(value: Any) -> Any:
    """CSV cells are strings; a cell holding a JSON list or object is decoded."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def dump_jsonl(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    for r in rows:
        buf.write(json.dumps(r, ensure_ascii=False) + "\n")
    return buf.getvalue()

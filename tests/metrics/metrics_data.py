"""Test helpers: reading the shared benchmark data (tests skip when it is absent)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest


def shared_datasets() -> Path:
    """``$FLOWBOT_SHARED_DATASETS``, else ``shared/datasets`` beside the repository checkout."""
    env = os.environ.get("FLOWBOT_SHARED_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def read_jsonl(relative: str) -> list[dict[str, Any]]:
    path = shared_datasets() / relative
    if not path.exists():
        pytest.skip(f"shared benchmark data not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]

"""Saving and loading workflows as plain JSON (never pickle).

A saved file records the FlowBot version and the IR schema version. Loading a file written with a
newer schema, or a file that is not a workflow, fails with a message that says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flowbot.errors import FlowBotError, read_text_file
from flowbot.graph.sketch import Problem, Workflow, WorkflowValidationError
from flowbot.version import __version__

#: bump when the saved form changes incompatibly; add an upgrade step in ``_upgrade``
IR_SCHEMA_VERSION = 1
FORMAT_TAG = "flowbot-workflow"


class WorkflowFileError(FlowBotError):
    """A workflow file that cannot be read: not JSON, not a workflow, or an incompatible version."""


def workflow_to_dict(workflow: Workflow) -> dict[str, Any]:
    body = workflow.model_dump(mode="json", exclude_defaults=False)
    return {"format": FORMAT_TAG, "schema_version": IR_SCHEMA_VERSION, "flowbot_version": __version__, **body}


def workflow_to_json(workflow: Workflow, indent: int = 2) -> str:
    return json.dumps(workflow_to_dict(workflow), indent=indent, ensure_ascii=False) + "\n"


def save_workflow(workflow: Workflow, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(workflow_to_json(workflow), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves half a file
    return path


def workflow_from_dict(data: Any, source: str = "<dict>", known_tools: set[str] | None = None) -> Workflow:
    if not isinstance(data, dict) or "sketch" not in data:
        raise WorkflowFileError(f"{source}: not a FlowBot workflow (no 'sketch' key)")
    fmt = data.get("format", FORMAT_TAG)
    if fmt != FORMAT_TAG:
        raise WorkflowFileError(f"{source}: format {fmt!r} is not {FORMAT_TAG!r}")
    version = data.get("schema_version", IR_SCHEMA_VERSION)
    if not isinstance(version, int) or version > IR_SCHEMA_VERSION or version < 1:
        saved_by = data.get("flowbot_version", "an unknown FlowBot version")
        raise WorkflowFileError(
            f"{source}: saved by FlowBot {saved_by} with IR schema {version!r}; this FlowBot "
            f"{__version__} reads schema 1..{IR_SCHEMA_VERSION}. Upgrade FlowBot to load it."
        )
    body = {k: v for k, v in data.items() if k not in ("format", "schema_version", "flowbot_version")}
    try:
        workflow = Workflow.model_validate(body)
    except ValidationError as exc:
        raise WorkflowFileError(f"{source}: " + describe_validation_error(exc, body)) from None
    workflow.check(known_tools, source=source)
    return workflow


def load_workflow(path: str | Path, known_tools: set[str] | None = None) -> Workflow:
    """Load and validate a workflow JSON file (errors name the file, and the line for bad JSON)."""
    path = Path(path)
    text = read_text_file(path, "workflow file", WorkflowFileError)
    if not text.strip():
        raise WorkflowFileError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}") from None
    return workflow_from_dict(data, str(path), known_tools)


def describe_validation_error(exc: ValidationError, body: Any) -> str:
    """pydantic's errors rewritten to name nodes by id instead of list index."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = _readable_location(loc, body)
        msg = err["msg"]
        if err["type"] == "union_tag_invalid":
            msg = f"unknown node kind (expected one of llm, tool, branch, merge): {err.get('input', {}).get('kind')!r}"
        elif err["type"] == "union_tag_not_found":
            msg = "node has no 'kind' (one of llm, tool, branch, merge)"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def _readable_location(loc: list[Any], body: Any) -> str:
    parts: list[str] = []
    cur = body
    i = 0
    while i < len(loc):
        key = loc[i]
        if key == "nodes" and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            idx = loc[i + 1]
            node = cur.get("nodes", [])[idx] if isinstance(cur, dict) else None
            node_id = node.get("id") if isinstance(node, dict) else None
            parts.append(f"node '{node_id}'" if node_id else f"node #{idx}")
            cur = node
            i += 2
            # pydantic adds the union tag (e.g. 'llm') to the location; skip it
            if i < len(loc) and loc[i] in ("llm", "tool", "branch", "merge"):
                i += 1
            continue
        parts.append(f"field '{key}'" if isinstance(key, str) else f"[{key}]")
        cur = cur.get(key) if isinstance(cur, dict) and isinstance(key, str) else None
        i += 1
    return ", ".join(parts) or "workflow"


__all__ = [
    "IR_SCHEMA_VERSION", "WorkflowFileError", "load_workflow", "save_workflow", "workflow_from_dict",
    "workflow_to_dict", "workflow_to_json", "Problem", "WorkflowValidationError",
]

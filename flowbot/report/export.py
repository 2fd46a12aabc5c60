"""``flowbot export``: a standalone Python module that runs an optimized workflow.

The module embeds the workflow as JSON (data, not code) and runs it with the installed ``flowbot``
runtime, so it can be copied into any project that has FlowBot installed.
"""

from __future__ import annotations

import json
from pathlib import Path

from flowbot.graph.io import load_workflow, workflow_to_dict
from flowbot.tools import default_registry

TEMPLATE = '''"""{name}: a FlowBot workflow exported with `flowbot export`.

    from {module} import run
    run({example})            # -> {outputs}

Reads: {inputs}. Writes: {outputs_list}. Needs `pip install flowbot` ({version} or newer).
Set the model with `run(..., model="...")` or the FLOWBOT_MODEL environment variable.
"""

from __future__ import annotations

import json
from typing import Any

from flowbot.graph.io import workflow_from_dict
from flowbot.runtime.runnable import Workflow

WORKFLOW_JSON = {workflow_json!r}

_workflow = Workflow.from_ir(workflow_from_dict(json.loads(WORKFLOW_JSON), source="{name}"))


def run({signature}, model: str | None = None) -> dict[str, Any]:
    """Run the workflow on one input and return its output fields."""
    return _workflow({{{call_fields}}}, model=model)


async def arun({signature}, model: str | None = None) -> dict[str, Any]:
    return await _workflow.arun({{{call_fields}}}, model=model)
'''


def export_python(workflow_path: str | Path, out_path: str | Path) -> Path:
    wf = load_workflow(workflow_path, known_tools=default_registry().signatures())
    out = Path(out_path)
    data = workflow_to_dict(wf)
    inputs = wf.sketch.inputs
    text = TEMPLATE.format(
        name=wf.name,
        module=out.stem,
        example=", ".join(f"{f}=..." for f in inputs),
        outputs="{" + ", ".join(f"'{f}': ..." for f in wf.sketch.outputs) + "}",
        inputs=", ".join(inputs),
        outputs_list=", ".join(wf.sketch.outputs),
        version=data["flowbot_version"],
        workflow_json=json.dumps(data, ensure_ascii=False),
        signature=", ".join(f"{f}: Any" for f in inputs),
        call_fields=", ".join(f"{f!r}: {f}" for f in inputs),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out

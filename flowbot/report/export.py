"""``flowbot export``: a standalone Python module that runs an optimized workflow.

The module embeds the workflow as JSON (data, not code) and runs it with the installed ``flowbot``
runtime, so it can be copied into any project that has FlowBot installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowbot.graph.io import load_workflow, workflow_to_dict
from flowbot.tools import default_registry

TEMPLATE = '''"""{name}: a FlowBot workflow exported with `flowbot export`.

    from {module} import run
    run({example})            # -> {outputs}

Reads: {inputs}. Writes: {outputs_list}. Needs `pip install flowbot` ({version} or newer).
{provenance}Set the model with `run(..., model="...")` or the FLOWBOT_MODEL environment variable.
"""

from __future__ import annotations

import json
from typing import Any

from flowbot.graph.io import workflow_from_dict
from flowbot.runtime.runnable import RunnableWorkflow

WORKFLOW_JSON = {workflow_json!r}

_workflow = RunnableWorkflow.from_ir(workflow_from_dict(json.loads(WORKFLOW_JSON), source="{name}"))


def run({signature}, model: str | None = None) -> dict[str, Any]:
    """Run the workflow on one input and return its output fields."""
    return _workflow({{{call_fields}}}, model=model)


async def arun({signature}, model: str | None = None) -> dict[str, Any]:
    return await _workflow.arun({{{call_fields}}}, model=model)
'''


def provenance(tuned: Any) -> str:
    """What the run that produced the workflow recorded about it (best.json's ``meta.tuned``)."""
    if not isinstance(tuned, dict):
        return ""

    def score(key: str) -> str:
        value = tuned.get(key)
        return f"{value:.3f}" if isinstance(value, (int, float)) else "not measured"

    optimizer = tuned.get("optimizer_model")
    by = f" (optimizer {optimizer})" if optimizer and optimizer != tuned.get("task_model") else ""
    return (f"Tuned on model {tuned.get('task_model')}{by} for task {tuned.get('task')} by FlowBot "
            f"{tuned.get('flowbot_version')} ({tuned.get('method')}, candidate {tuned.get('candidate')}): "
            f"validation {score('val_score')} (seed {score('seed_val_score')}), "
            f"test {score('test_score')} (seed {score('seed_test_score')}, n={tuned.get('test_n')}).\n"
            "Another model may score differently.\n")


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
        provenance=provenance(wf.meta.get("tuned")),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out

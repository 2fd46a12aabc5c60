"""The "Bring your own task" page runs as written, so it cannot rot.

The default suite runs its Python example against a scripted OpenAI-compatible server (the page's
code is unchanged: the default model comes from FLOWBOT_MODEL / FLOWBOT_BASE_URL); the realmodel
variant runs it on the embedded 0.5B model."""

import ast
import json
import os
import re
from pathlib import Path

import pytest

from flowbot.testing import OpenAITestServer, which_prompt

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "own-task.md"


def python_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return [b for b in blocks if "flowbot.optimize" in b]


#: optimizer requests the scripted server was not given a reply for (each fails the test)
UNSCRIPTED: list[str] = []


def scripted(body: dict) -> str:
    """A plausible router for the task's requests (keyword rules, which the optimizer's rewrite
    makes stricter) and the optimizer's named prompts; any other optimizer request is recorded."""
    messages = body["messages"]
    system, user = messages[0]["content"], messages[-1]["content"]
    prompt = which_prompt(body)
    if prompt == "loss":
        return "The label is wrong."
    if prompt == "backward":
        return "GRADIENT: say that reports of broken behaviour are bugs even when money is mentioned."
    if prompt == "rewrite":
        return "<instruction>Route the ticket. Broken behaviour is a bug even if money is mentioned.</instruction>"
    if prompt == "aggregate":
        return "- broken behaviour is a bug even if money is mentioned"
    if prompt == "edit":
        edit = body["response_format"]["json_schema"]["schema"]["properties"]["edit"]
        verify = next(a for a in edit.get("anyOf", [edit]) if a["properties"]["op"]["const"] == "verify_and_revise")
        return json.dumps({"critique": "a second look at the label helps",
                           "edit": {k: v["const"] for k, v in verify["properties"].items()}})
    if prompt is not None:
        UNSCRIPTED.append(prompt)
        return "unscripted"
    text = user.lower()
    if any(w in text for w in ("crash", "error", "blank", "forever", "wrong", "404", "freez", "invisible", "twice on")):
        if "broken behaviour" in system.lower() or not any(w in text for w in ("$", "invoice", "payment")):
            return "Answer: bug"
    for label, words in (("billing", ("charge", "invoice", "refund", "price", "paid", "bill", "payment", "fee")),
                         ("account", ("password", "account", "email", "login", "access", "username", "workspace")),
                         ("feature_request", ("add", "support", "would", "love", "could", "please let"))):
        if any(w in text for w in words):
            return f"Answer: {label}"
    return "Answer: bug"


def run_doc(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = python_blocks()
    assert len(code) == 1, "the page should hold one complete Python example"
    source = code[0].replace('"runs/tickets"', repr(str(tmp_path / "run"))).replace(
        '"tickets_best.json"', repr(str(tmp_path / "best.json")))
    exec(compile(source, str(DOC), "exec"), {"__name__": "__doc__"})
    return tmp_path / "run"


def check_what_it_printed(printed: str, run_dir: Path, best_path: Path) -> dict:
    """What the page's example prints and leaves behind, whatever the model: the split sizes, the
    estimate, every event of the run in order, the scores (the best never below the seed on
    validation), the example ticket's output, the test score; the summary agrees, within budget."""
    from flowbot.graph import load_workflow
    from flowbot.optim.events import EVENT_TYPES
    from flowbot.tools import default_registry

    lines = printed.splitlines()
    assert lines[0] == "{'train': 24, 'val': 12, 'test': 12}"
    estimate = ast.literal_eval(lines[1])
    assert estimate["task_calls"] > 0 and estimate["optimizer_calls"] > 0 and not estimate["usd"]  # free or unpriced
    events = lines[2:lines.index("run_finished") + 1]
    assert events[:3] == ["run_started", "seed_evaluated", "budget_plan"] and set(events) <= set(EVENT_TYPES)
    scores = re.fullmatch(r"(\S+) -> (\S+) \| test (\S+)", lines[len(events) + 2])
    assert scores, lines[len(events) + 2]
    seed_val, best_val, test = (float(x) for x in scores.groups())
    assert 0.0 <= seed_val <= best_val <= 1.0 and 0.0 <= test <= 1.0
    answer = ast.literal_eval(lines[len(events) + 3])
    assert set(answer) == {"label"}
    assert 0.0 <= float(lines[len(events) + 4]) <= 1.0 and len(lines) == len(events) + 5
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"]["val_score"] == best_val and summary["seed"]["val_score"] == seed_val
    assert summary["test"]["score"] == test and summary["test"]["n"] == 12
    assert summary["budget"]["spent"]["calls"] <= 150
    assert events.count("test_evaluated") == 2 and "candidate_accepted" in events
    load_workflow(best_path, known_tools=default_registry().signatures())
    return {"seed_val": seed_val, "best_val": best_val, "test": test, "answer": answer, "summary": summary,
            "evaluated": float(lines[len(events) + 4]), "events": events}


def test_doc_example_runs(tmp_path, monkeypatch, capsys):
    UNSCRIPTED.clear()
    with OpenAITestServer(reply=scripted) as srv:
        monkeypatch.setenv("FLOWBOT_MODEL", "router")
        monkeypatch.setenv("FLOWBOT_BASE_URL", srv.base_url)
        run_dir = run_doc(tmp_path, monkeypatch)
    seen = check_what_it_printed(capsys.readouterr().out, run_dir, tmp_path / "best.json")
    assert UNSCRIPTED == []  # every optimizer request was one the script answers
    assert seen["answer"] == {"label": "billing"} and seen["evaluated"] == seen["test"]
    assert seen["summary"]["proposals"]["valid"] == seen["summary"]["proposals"]["applied"] == 1
    assert "proposal" in seen["events"] and "inner_candidate" in seen["events"]


@pytest.mark.realmodel
@pytest.mark.timeout(3600)
def test_doc_example_on_the_embedded_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWBOT_MODEL", os.environ.get("FLOWBOT_DOC_MODEL", "qwen2.5-coder-0.5b"))
    run_dir = run_doc(tmp_path, monkeypatch)
    seen = check_what_it_printed(capsys.readouterr().out, run_dir, tmp_path / "best.json")
    # the embedded model paid for its calls: every role's usage is in the summary
    usage = seen["summary"]["usage_by_role"]
    assert usage["task"]["calls"] > 0 and usage["task"]["prompt_tokens"] > 0

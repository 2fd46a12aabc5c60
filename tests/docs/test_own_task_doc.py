"""The "Bring your own task" page runs as written, so it cannot rot.

The default suite runs its Python example against a scripted OpenAI-compatible server (the page's
code is unchanged: the default model comes from FLOWBOT_MODEL / FLOWBOT_BASE_URL); the realmodel
variant runs it on the embedded 0.5B model."""

import os
import re
from pathlib import Path

import pytest

from flowbot.testing import OpenAITestServer

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "own-task.md"


def python_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return [b for b in blocks if "flowbot.optimize" in b]


def scripted(body: dict) -> str:
    """A plausible router: keyword rules, which the optimizer's rewrite makes stricter."""
    messages = body["messages"]
    system, user = messages[0]["content"], messages[-1]["content"]
    if "What is wrong with the output?" in user:
        return "The label is wrong."
    if "Reply with exactly these lines" in user:
        return "GRADIENT: say that reports of broken behaviour are bugs even when money is mentioned."
    if "<instruction>" in user:
        return "<instruction>Route the ticket. Broken behaviour is a bug even if money is mentioned.</instruction>"
    if "Edit vocabulary" in user:
        return '```json\n{"op": "insert_verifier", "target": "solve"}\n```'
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


def test_doc_example_runs(tmp_path, monkeypatch, capsys):
    with OpenAITestServer(reply=scripted) as srv:
        monkeypatch.setenv("FLOWBOT_MODEL", "router")
        monkeypatch.setenv("FLOWBOT_BASE_URL", srv.base_url)
        run_dir = run_doc(tmp_path, monkeypatch)
    printed = capsys.readouterr().out
    assert "{'train': 24, 'val': 12, 'test': 12}" in printed
    assert "run_finished" in printed and "{'label': 'billing'}" in printed
    assert (run_dir / "summary.json").exists() and (tmp_path / "best.json").exists()


@pytest.mark.realmodel
@pytest.mark.timeout(3600)
def test_doc_example_on_the_embedded_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWBOT_MODEL", os.environ.get("FLOWBOT_DOC_MODEL", "qwen2.5-coder-0.5b"))
    run_dir = run_doc(tmp_path, monkeypatch)
    assert (run_dir / "summary.json").exists()
    assert "run_finished" in capsys.readouterr().out

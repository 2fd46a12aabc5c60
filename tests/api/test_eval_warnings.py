"""An evaluation whose outputs are stuck (one output, never right, on most examples) says so: a mean
of about 0 must not pass silently for a weak method (ReAct's unrun tool calls on DROP did)."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from flowbot.cli.main import app
from flowbot.testing import OpenAITestServer


def _eval(tmp_path, reply):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"q": f"{i}+1", "a": str(i + 1)}) + "\n" for i in range(40)))
    out = tmp_path / "eval.json"
    with OpenAITestServer(reply=reply) as srv:
        res = CliRunner().invoke(app, ["eval", "--data", str(data), "--input", "q", "--target", "a", "--metric",
                                       "exact_match", "--split", "train", "-w", "io", "--model", "scripted",
                                       "--base-url", srv.base_url, "--cache", str(tmp_path / "c.sqlite"),
                                       "--out", str(out)])
    assert res.exit_code == 0, res.output
    return res.output, json.loads(out.read_text())["results"][0]


def test_stuck_outputs_get_a_warning_line_and_are_in_the_json(tmp_path):
    output, result = _eval(tmp_path, lambda body: "Action: python")
    assert result["score"] == 0 and len(result["warnings"]) == 1
    assert f"{result['n']} of {result['n']} outputs are" in result["warnings"][0]
    assert "warning: " in output and "Action: python" in output.split("warning: ", 1)[1]


def _sum(body: dict) -> str:
    a, b = re.findall(r"(\d+)\+(\d+)", body["messages"][-1]["content"])[-1]
    return f"Answer: {int(a) + int(b)}"


def test_right_answers_get_no_warning(tmp_path):
    output, result = _eval(tmp_path, _sum)
    assert result["score"] == 1.0 and result["warnings"] == [] and "warning" not in output

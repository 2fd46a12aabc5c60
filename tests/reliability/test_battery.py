"""The fast subset of the reliability battery (``benchmarks/reliability.py --fast``), one test per
section: every invariant figure must hold (no leak, no lost event, results equal, one-line
errors, nothing paid twice, hostile snippets stopped where the level claims to stop them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reliability.py"


def battery():
    name = "flowbot_reliability_battery"
    if name not in sys.modules:  # its dataclasses need the module registered while it loads
        spec = importlib.util.spec_from_file_location(name, PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("section", ["lm", "crash", "hostile", "secrets", "input", "concurrency"])
def test_battery_section(section, tmp_path, monkeypatch):
    for key in ("OPENAI_API_KEY", "FLOWBOT_SANDBOX"):
        monkeypatch.delenv(key, raising=False)
    figures = battery().run(fast=True, only=[section], work=tmp_path)
    checked = [f for f in figures if f.ok is not None]
    assert checked, f"section {section} printed no invariant figure"
    failed = [f.line() for f in checked if not f.ok]
    assert not failed, "\n".join(failed)


@pytest.mark.timeout(240)
def test_a_kill_point_never_reached_is_a_figure_and_zero_kills_fail_the_check(tmp_path, monkeypatch):
    """The fast crash subset has one kill point: when its phase never happens, the section must not
    pass with 0 kills survived out of 0."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    module = battery()
    real = module._classify
    monkeypatch.setattr(module, "_classify", lambda bodies: [lab if lab != "backward pass" else "loss"
                                                            for lab in real(bodies)])
    figures = module.run(fast=True, only=["crash"], work=tmp_path)
    lines = {f.what: f for f in figures}
    assert "skipped" in lines["kill during a backward pass"].value
    assert lines["kill points skipped (phase never reached)"].value.startswith("1/1")
    assert lines["kills survived"].value.startswith("0/0") and lines["kills survived"].ok is False

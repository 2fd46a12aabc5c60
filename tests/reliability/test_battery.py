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


def test_the_hostile_section_has_40_snippets_with_guard_bypasses_and_a_real_fast_subset():
    module = battery()
    attacks = module._attacks()
    names = [a.name for a in attacks]
    assert len(set(names)) == len(names) >= 40
    assert sum(a.bypass for a in attacks) >= 8  # code that switches the guard off itself
    assert len(module.FAST_HOSTILE) > 3 and set(module.FAST_HOSTILE) <= set(names)
    assert any(attacks[names.index(n)].bypass for n in module.FAST_HOSTILE)


def test_processes_left_counts_every_survivor_not_only_sleep_children(tmp_path):
    """A detached survivor that is no `sleep` (here a Python process) is counted, and killed."""
    import secrets

    marker = "flowbot-battery-survivor-" + secrets.token_hex(4)
    code = f"""
import ctypes, importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("battery", {str(PATH)!r})
module = importlib.util.module_from_spec(spec)
sys.modules["battery"] = module
spec.loader.exec_module(module)
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # a subreaper, as the hostile worker is
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)  # {marker}"])
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(0.3)
print("LEFT", module._leftovers("no-such-token"), module._leftovers("no-such-token"))
"""
    import os
    import subprocess

    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(PATH.parents[1])})
    finally:  # whatever happened, the survivor does not outlive the test
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker.encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                    os.kill(int(entry), 9)
            except OSError:
                pass
    assert "LEFT 1 0" in proc.stdout, proc.stdout + proc.stderr  # counted once, then gone

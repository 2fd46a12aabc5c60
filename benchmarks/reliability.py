"""The reliability battery: FlowBot tried as a hostile user would, against its own components and a
local OpenAI-compatible test server on 127.0.0.1 only. Prints one figure per line.

    python benchmarks/reliability.py                 # the full battery (a few minutes)
    python benchmarks/reliability.py --fast          # the subset the default test suite runs
    python benchmarks/reliability.py --only crash --only secrets
    python benchmarks/reliability.py --check         # exit 1 when an invariant figure is off (CI)

Sections:
  lm           each fault kind (429, 5xx, timeouts, dropped connections, truncated or choice-less
               bodies, empty completions, header-echoing errors) at a set rate during an evaluation
               and an optimization: runs completed, results equal to a fault-free run, retries;
               permanent errors (401, 404, 400 context length, 429 quota): requests before the stop;
               an unreachable server: a non-zero exit and one line naming it
  crash        real ``flowbot optimize`` processes SIGKILLed at a set of points (during the seed's
               evaluation, a backward pass, a proposal, a candidate's evaluation, the test
               evaluation, writing the event log, writing the summary), then resumed: kills survived,
               results equal to an uninterrupted run, calls re-paid, events lost or duplicated,
               cache integrity
  hostile      at least 40 hostile snippets on every isolation level this host has (secrets through
               /proc, sockets to 127.0.0.1, this host's address and unix sockets, writes and links out
               of the folder, programs, detached and launcher-killing children, disk, memory and fds in
               total, signals, ptrace), each with the audit guard on and switched off (as a successful
               bypass would), plus code that switches the guard off itself (frames and closures of the
               hook, ctypes raw memory, monkeypatched os/posixpath/builtins, _posixsubprocess, gc,
               sub-interpreters) and then tries to escape: stopped / total, bypasses that worked and
               escapes after them (expected on "process", which is no boundary; 0 on kernel levels),
               parent healthy, processes left (every process a run leaves alive, counted below the
               worker, a child subreaper)
  secrets      a planted API key in every form (plain, trailing newline, trailing space, echoed in a
               server's error bodies) searched for in every artifact of a run: leaks
  input        a table of malformed workflows, datasets, configs, metrics and options through the
               CLI: clean one-line errors / total, partial files left
  concurrency  two ``flowbot optimize`` processes on one run directory: calls paid twice
  starved      MATH answers checked (math-verify, 1 s timeout) by a process at nice 10 while busy
               processes hold every core, as when a model shares the machine: verdicts right (a
               wall-clock timeout scored correct answers 0 there; the checks limit CPU time now)

Figures, not assertions: each line is ``section: what: figure``. ``--check`` makes the exit code
say whether the invariants hold (no leak, no lost event, equal results, ...); expected weaknesses
of the no-boundary "process" sandbox level are printed as such, not counted as failures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import secrets as pysecrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowbot.testing import Fault, OpenAITestServer, which_prompt  # noqa: E402


# -- figures -------------------------------------------------------------------------------------
@dataclass
class Figure:
    section: str
    what: str
    value: str
    ok: bool | None = None  # None: informative only; False: an invariant is off

    def line(self) -> str:
        mark = "" if self.ok is not False else "   <-- FAIL"
        return f"{self.section}: {self.what}: {self.value}{mark}"


@dataclass
class Battery:
    fast: bool
    work: Path
    figures: list[Figure] = field(default_factory=list)

    def add(self, section: str, what: str, value: str, ok: bool | None = None) -> Figure:
        fig = Figure(section, what, value, ok)
        self.figures.append(fig)
        print(fig.line(), flush=True)
        return fig


# -- a deterministic scripted model for both roles -----------------------------------------------
RULE = "CARRY RULE"


def brain(body: dict) -> str:
    """Replies that depend only on the request, so interrupted and uninterrupted runs agree: the
    task model adds two numbers (wrong on some, unless its instruction has the rule), the
    optimizer model ("opt") answers its named prompts: criticises, rewrites instructions and
    proposes the first edit its schema offers."""
    messages = body.get("messages") or []
    text = "\n".join(str(m.get("content") or "") for m in messages)
    last = str(messages[-1].get("content") or "") if messages else ""
    if body.get("model") == "opt":
        return _optimizer_reply(body)
    m = re.search(r"(\d+)\s*\+\s*(\d+)", last)
    if not m:
        return "Answer: 0"
    a, b = int(m.group(1)), int(m.group(2))
    right = RULE in text or (a * 7 + b) % 3 != 0
    return f"Reasoning: {a} plus {b}.\nAnswer: {a + b if right else a + b + 1}"


def _optimizer_reply(body: dict) -> str:
    prompt = which_prompt(body) or "unnamed"
    if prompt == "rewrite":
        return f"<instruction>Add the two numbers. {RULE}: carry the tens, then check the sum.</instruction>"
    if prompt.split()[0] in ("edit", "aflow"):  # a proposal or its repair: a step after the answer
        # (a verifier, else a format step, else the first choice offered), so a workflow makes one
        # call at a time and a kill finds at most one in flight
        edit = body["response_format"]["json_schema"]["schema"]["properties"]["edit"]
        offered = [alt["properties"] for alt in edit.get("anyOf", [edit])]
        rank = {"verify_and_revise": 0, "format_answer": 1}
        best = min(offered, key=lambda props: rank.get(props["op"]["const"], 2))
        choice = {k: v["const"] if "const" in v else v["enum"][0] for k, v in best.items()}
        return "The single step makes arithmetic slips.\n```json\n" + json.dumps(
            {"critique": "arithmetic slips", "edit": choice}) + "\n```"
    if prompt == "backward":
        return f"GRADIENT: add a {RULE}: carry the tens.\nFEEDBACK[question]: NONE"
    if prompt == "loss":
        return f"The sum is off by one: the tens were not carried. Add a {RULE}."
    if prompt == "aggregate":
        return f"- add a {RULE}: carry the tens"
    raise ValueError(f"the battery's optimizer has no reply for the {prompt} prompt")  # a 500: the run fails


def write_data(path: Path, n: int = 40) -> Path:
    rng = random.Random(13)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"id": f"q{i}", "question": f"What is {a} + {b}?", "answer": str(a + b)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def flowbot_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowbot.cli.main", *args]


def optimize_args(data: Path, base_url: str, run_dir: Path, *extra: str) -> list[str]:
    return ["optimize", "--data", str(data), "--input", "question", "--target", "answer", "--metric", "numeric",
            "--model", "task", "--optimizer-model", "opt", "--base-url", base_url, "--optimizer-base-url", base_url,
            "--run-dir", str(run_dir), "--train-size", "6", "--val-size", "5", "--test-size", "5",
            "--steps", "2", "--rounds", "2", "--minibatch", "3", "--demos", "0", "--concurrency", "1",
            "--no-report", *extra]


def child_env(b: Battery, **extra: str) -> dict[str, str]:
    """A CLI process's environment: no keys but the planted ones, a private FlowBot home."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "FLOWBOT_SANDBOX"}
    env.update({"FLOWBOT_HOME": str(b.work / "home"), "FLOWBOT_CACHE": "off", "PYTHONPATH": str(ROOT),
                "NO_COLOR": "1", "COLUMNS": "200"})
    env.update(extra)
    return env


# -- section: LM faults --------------------------------------------------------------------------
FAULT_KINDS: dict[str, Callable[[], Fault]] = {
    "429": lambda: Fault.rate_limit(retry_after=0.05),
    "500": lambda: Fault.http(500),
    "503": lambda: Fault.http(503, "overloaded"),
    "timeout": lambda: Fault.slow(3.0),
    "dropped connection": Fault.drop,
    "truncated body": Fault.invalid_json,
    "no choices": Fault.missing_choices,
    "empty completion": Fault.empty,
    "error echoing headers": lambda: Fault.echo_headers(502),
}
PERMANENT: dict[str, Callable[[], Fault]] = {"401 bad key": Fault.bad_key, "404 unknown model": Fault.unknown_model,
                                             "400 context too long": Fault.context_too_long,
                                             "429 quota": Fault.quota}


class FaultMix:
    """A fault rule: each request faults with probability ``rate`` (seeded, so reproducible)."""

    def __init__(self, kinds: list[str], rate: float, seed: int = 0) -> None:
        self.kinds, self.rate, self.rng, self.injected = kinds, rate, random.Random(seed), 0
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> Fault | None:
        with self.lock:
            if not self.kinds or self.rng.random() >= self.rate:
                return None
            self.injected += 1
            return FAULT_KINDS[self.kinds[self.injected % len(self.kinds)]]()


def _providers(base_url: str, timeout: float = 1.0) -> dict[str, Any]:
    from flowbot.lm.openai_compat import OpenAICompatProvider

    return {name: OpenAICompatProvider(name, base_url=base_url, timeout=timeout, api_key_env="FLOWBOT_BATTERY_KEY")
            for name in ("task", "opt")}


def _task(data: Path, split: tuple[float, float, float] = (0.5, 0.25, 0.25)) -> Any:
    import flowbot

    return flowbot.Task("sums", data=str(data), inputs=["question"], targets=["answer"], metric="numeric",
                        split=split)


async def _evaluate(data: Path, base_url: str) -> Any:
    import flowbot

    return await flowbot.aevaluate("cot", _task(data, (1.0, 0.0, 0.0)), split="train", model="task",
                                   providers=_providers(base_url), cache=False, concurrency=4)


def lm_faults(b: Battery) -> None:
    data = write_data(b.work / "lm.jsonl", 20 if b.fast else 80)
    kinds = ["empty completion", "503"] if b.fast else list(FAULT_KINDS)
    with OpenAITestServer(reply=brain) as srv:
        ref = asyncio.run(_evaluate(data, srv.base_url))
        ref_preds = [r.prediction for r in ref.batch.results]
        for kind in kinds:
            srv.reset()
            srv.fault_rule = FaultMix([kind], 0.2, seed=len(kind))
            try:
                res = asyncio.run(_evaluate(data, srv.base_url))
                preds = [r.prediction for r in res.batch.results]
                equal = sum(p == q for p, q in zip(preds, ref_preds))
                retries = res.usage["task"]["retries"]
                done = 1
            except Exception as exc:  # noqa: BLE001 - a figure, not a crash
                equal, retries, done = 0, 0, 0
                print(f"    ({kind}: {type(exc).__name__}: {str(exc)[:200]})")
            injected = srv.fault_rule.injected
            b.add("lm", f"eval, {kind} at 20%", f"completed {done}/1, predictions equal {equal}/{len(ref_preds)}, "
                  f"faults {injected}, retries {retries}", ok=done == 1 and equal == len(ref_preds) and retries >= injected)
        srv.fault_rule = None
        opt_data = write_data(b.work / "lm-opt.jsonl", 40)
        _optimization_under_faults(b, opt_data, srv, kinds)
        _permanent_errors(b, opt_data, srv)


def _optimize(data: Path, base_url: str, run_dir: Path) -> Any:
    import flowbot

    return flowbot.optimize(_task(data), seed="cot", model="task", optimizer_model="opt", run_dir=run_dir,
                            providers=_providers(base_url), train_size=6, val_size=5, test_size=5,
                            inner={"steps": 2, "minibatch_size": 3, "demos": 0}, outer={"rounds": 2}, concurrency=2)


def _essence(summary: dict) -> dict:
    """What must not change between equivalent runs."""
    return {"best": summary.get("best"), "seed": summary.get("seed"),
            "test": (summary.get("test") or {}).get("score"), "seed_test": (summary.get("seed_test") or {}).get("score"),
            "candidates": [(c.get("id"), c.get("val_score")) for c in summary.get("candidates") or []]}


def _optimization_under_faults(b: Battery, data: Path, srv: OpenAITestServer, kinds: list[str]) -> None:
    srv.reset()
    ref = _optimize(data, srv.base_url, b.work / "lm-opt-ref")
    srv.reset()
    srv.fault_rule = mix = FaultMix(kinds, 0.1 if b.fast else 0.2, seed=7)
    try:
        res = _optimize(data, srv.base_url, b.work / "lm-opt-faults")
        equal = _essence(res.summary) == _essence(ref.summary)
        retries = sum(r["retries"] for r in res.usage.values())
        done = 1
    except Exception as exc:  # noqa: BLE001
        done, equal, retries = 0, False, 0
        print(f"    (optimize under faults: {type(exc).__name__}: {str(exc)[:200]})")
    finally:
        srv.fault_rule = None
    b.add("lm", f"optimize, {len(kinds)} fault kinds mixed at {mix.rate:.0%}",
          f"completed {done}/1, result equal to the fault-free run {'yes' if equal else 'no'}, faults {mix.injected}, "
          f"retries {retries}", ok=done == 1 and equal)


def _permanent_errors(b: Battery, data: Path, srv: OpenAITestServer) -> None:
    from typer.testing import CliRunner

    from flowbot.cli.main import app

    for name, make in list(PERMANENT.items())[: 1 if b.fast else None]:
        stops = []
        for command in ("eval", "optimize"):
            srv.reset()
            srv.fault_rule = lambda body, make=make: make()
            args = [command, "--data", str(data), "--input", "question", "--target", "answer", "--metric", "numeric",
                    "--model", "task", "--base-url", srv.base_url, "--concurrency", "1"]
            args += ["--out", str(b.work / "perm.json")] if command == "eval" else ["--run-dir", str(b.work / "perm-run")]
            res = CliRunner().invoke(app, args)
            lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
            stops.append((command, srv.request_count, res.exit_code, len(lines)))
        srv.fault_rule = None
        text = ", ".join(f"{c} stopped after {n} request(s) (exit {e}, {k} line)" for c, n, e, k in stops)
        b.add("lm", f"permanent {name}", text, ok=all(n == 1 and e != 0 and k == 1 for _, n, e, k in stops))
    _unreachable_server(b, data)


def _unreachable_server(b: Battery, data: Path) -> None:
    """A base URL nothing listens on: after the retries (their waits cut short here), one line naming
    the server and a non-zero exit, never a table of zeros."""
    import socket

    from typer.testing import CliRunner

    from flowbot.cli.main import app
    from flowbot.lm.retry import RetryPolicy

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    delay = RetryPolicy.delay
    RetryPolicy.delay = lambda self, attempt, retry_after: 0.001  # type: ignore[method-assign]
    said = []
    try:
        for command in ("eval", "optimize"):
            args = [command, "--data", str(data), "--input", "question", "--target", "answer", "--metric", "numeric",
                    "--model", "task", "--base-url", url, "--concurrency", "1"]
            args += ["--out", str(b.work / "dead.json")] if command == "eval" else ["--run-dir", str(b.work / "dead")]
            res = CliRunner().invoke(app, args)
            lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
            named = len(lines) == 1 and f"cannot reach {url}" in lines[0]
            left = (b.work / "dead.json").exists() or (b.work / "dead").exists()
            said.append((command, res.exit_code, len(lines), named, left))
    finally:
        RetryPolicy.delay = delay  # type: ignore[method-assign]
    b.add("lm", "unreachable server", ", ".join(
        f"{c} exit {e}, {k} line{'' if k == 1 else 's'}{' naming it' if n else ''}{', output left' if x else ''}"
        for c, e, k, n, x in said), ok=all(e != 0 and k == 1 and n and not x for _, e, k, n, x in said))


# -- section: crash and resume -------------------------------------------------------------------
@dataclass
class RunRecord:
    summary: dict
    events: list[dict]
    best: str
    requests: int


def _read_run(run_dir: Path, requests: int) -> RunRecord:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    best = json.loads((run_dir / "best.json").read_text())
    for key in ("run_id", "run_dir"):  # where the run lives, not what it found
        best.get("meta", {}).get("tuned", {}).pop(key, None)
    return RunRecord(json.loads((run_dir / "summary.json").read_text()), events,
                     json.dumps(best, sort_keys=True), requests)


def _event_key(event: dict) -> str:
    """An event without what legitimately differs between sessions (times, usage, resume marks)."""
    drop = {"time", "usage_total", "resumed", "usage", "wall_s", "seq"}
    return json.dumps({k: v for k, v in event.items() if k not in drop}, sort_keys=True, default=str)


def _classify(bodies: list[dict]) -> list[str]:
    """A label per request of the reference run: which phase it belongs to."""
    labels = []
    task_seen = 0
    for body in bodies:
        prompt = which_prompt(body) or ""
        if body.get("model") != "opt":
            task_seen += 1
            labels.append("seed evaluation" if task_seen <= 5 else "task")
        elif prompt.split(" ")[0] in ("edit", "aflow"):
            labels.append("proposal")
        elif prompt == "backward":
            labels.append("backward pass")
        elif prompt == "rewrite":
            labels.append("prompt step")
        else:
            labels.append("loss")
    # the last task calls are the test evaluation (best and seed on 5 examples each)
    task_idx = [i for i, lab in enumerate(labels) if lab in ("task", "seed evaluation")]
    for i in task_idx[-10:]:
        labels[i] = "test evaluation"
    return labels


def _kill_points(labels: list[str], fast: bool) -> list[tuple[str, int | None, str | None]]:
    """(point, kill at request k, or FLOWBOT_CRASH_AT value)."""
    def first(label: str, nth: int = 0) -> int | None:
        hits = [i + 1 for i, lab in enumerate(labels) if lab == label]
        return hits[min(nth, len(hits) - 1)] if hits else None

    points = [("during the seed's evaluation", first("seed evaluation", 2), None),
              ("during a backward pass", first("backward pass", 1), None),
              ("during a proposal", first("proposal"), None),
              ("during a candidate's evaluation", first("task", 3), None),
              ("during a prompt step", first("prompt step"), None),
              ("during the test evaluation", first("test evaluation", 4), None),
              ("writing the event log (2nd event)", None, "events:2"),
              ("writing the event log (a middle event)", None, "events:6"),
              ("writing the summary", None, "summary")]
    if fast:
        points = [points[1]]
    return points  # a point whose phase never happened has neither: reported as skipped


def _run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(flowbot_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def crash_resume(b: Battery) -> None:
    data = write_data(b.work / "crash.jsonl", 40)
    kill = {"at": None, "proc": None}

    def on_request(body: dict) -> None:  # in the server thread, as the k-th request arrives
        if kill["at"] is not None and srv.request_count == kill["at"] and kill["proc"] is not None:
            os.kill(kill["proc"].pid, signal.SIGKILL)

    with OpenAITestServer(reply=brain, on_request=on_request) as srv:
        env = child_env(b)
        ref_dir = b.work / "crash-ref"
        done = _run_cli(optimize_args(data, srv.base_url, ref_dir), env)
        if done.returncode != 0:
            b.add("crash", "reference run", f"failed: {done.stderr.strip()[-300:]}", ok=False)
            return
        ref = _read_run(ref_dir, srv.request_count)
        labels = _classify(list(srv.requests))
        survived = equal = 0
        repaid_max = lost = dup = bad_cache = 0
        points = _kill_points(labels, b.fast)
        skipped = [point for point, at, crash in points if at is None and crash is None]
        for point in skipped:
            b.add("crash", f"kill {point}", "skipped: the reference run never reached this phase")
        points = [p for p in points if p[0] not in skipped]
        for i, (point, at, crash) in enumerate(points):
            srv.reset()
            run_dir = b.work / f"crash-{i}"
            args = optimize_args(data, srv.base_url, run_dir)
            kill["at"] = at
            proc = subprocess.Popen(flowbot_cmd(*args), env=child_env(b, **({"FLOWBOT_CRASH_AT": crash} if crash else {})),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            kill["proc"] = proc
            proc.communicate(timeout=180)
            kill["at"], kill["proc"] = None, None
            killed = proc.returncode == -signal.SIGKILL
            first_requests = srv.request_count
            again = _run_cli(args, env)
            ok_resume = killed and again.returncode == 0 and (run_dir / "summary.json").exists()
            if not ok_resume:
                b.add("crash", f"kill {point}", f"killed {killed}, resume exit {again.returncode}: "
                      f"{again.stderr.strip()[-200:]}", ok=False)
                continue
            rec = _read_run(run_dir, srv.request_count)
            survived += 1
            same = _essence(rec.summary) == _essence(ref.summary) and rec.best == ref.best
            equal += same
            repaid = rec.requests - ref.requests
            repaid_max = max(repaid_max, repaid)
            ref_keys, got_keys = [_event_key(e) for e in ref.events], [_event_key(e) for e in rec.events]
            n_lost = sum(1 for k in set(ref_keys) if got_keys.count(k) < ref_keys.count(k))
            n_dup = sum(1 for k in set(got_keys) if got_keys.count(k) > ref_keys.count(k))
            seqs = [e.get("seq") for e in rec.events]
            n_dup += len(seqs) - len(set(seqs))
            lost, dup = lost + n_lost, dup + n_dup
            integrity = _cache_ok(run_dir / "cache.sqlite")
            bad_cache += not integrity
            b.add("crash", f"kill -9 {point}" + (f" (request {at}: {labels[at - 1]})" if at else ""),
                  f"resumed {'ok' if ok_resume else 'FAILED'}, result {'equal' if same else 'DIFFERENT'}, "
                  f"requests {first_requests}+{rec.requests - first_requests} vs {ref.requests} (re-paid {repaid}), "
                  f"events lost {n_lost} duplicated {n_dup}, cache {'ok' if integrity else 'CORRUPT'}",
                  ok=same and repaid <= 1 and n_lost == 0 and n_dup == 0 and integrity)
        n = len(points)
        b.add("crash", "kill points skipped (phase never reached)",
              f"{len(skipped)}/{len(skipped) + n}" + (f": {', '.join(skipped)}" if skipped else ""))
        b.add("crash", "kills survived", f"{survived}/{n}" + ("" if n else " (no kill was made: nothing is shown)"),
              ok=n > 0 and survived == n)
        b.add("crash", "final results equal to an uninterrupted run", f"{equal}/{n}", ok=n > 0 and equal == n)
        b.add("crash", "calls re-paid, most in one kill", f"{repaid_max} (in flight at a kill: at most 1)",
              ok=repaid_max <= 1)
        b.add("crash", "events lost / duplicated", f"{lost} / {dup}", ok=lost == 0 and dup == 0)
        b.add("crash", "caches failing integrity_check", f"{bad_cache}", ok=bad_cache == 0)


def _cache_ok(path: Path) -> bool:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
    except sqlite3.Error:
        return False


# -- section: concurrency ------------------------------------------------------------------------
def concurrency(b: Battery) -> None:
    data = write_data(b.work / "conc.jsonl", 40)
    # slow answers while the second process starts, so the first is still busy however long a
    # loaded machine takes to start the second one
    with OpenAITestServer(reply=brain, latency_s=5.0) as srv:
        env = child_env(b)
        run_dir = b.work / "conc-run"
        first = subprocess.Popen(flowbot_cmd(*optimize_args(data, srv.base_url, run_dir)), env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 60
        while srv.request_count == 0 and time.monotonic() < end:
            time.sleep(0.02)
        second = _run_cli(optimize_args(data, srv.base_url, run_dir), env)
        srv.latency_s = 0.0
        first.communicate(timeout=180)
        both = srv.request_count
        srv.reset()
        alone = _run_cli(optimize_args(data, srv.base_url, b.work / "conc-alone"), env)
        single = srv.request_count
    refused = second.returncode != 0 and "in use by" in second.stderr
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]
    seqs = [e["seq"] for e in events]
    b.add("concurrency", "second process on a busy run directory",
          f"{'refused' if refused else 'NOT refused'} (exit {second.returncode}): {second.stderr.strip()[:160]}",
          ok=refused)
    b.add("concurrency", "calls paid twice", f"{both - single} ({both} requests for both, {single} for one run)",
          ok=both == single and first.returncode == 0 and alone.returncode == 0)
    b.add("concurrency", "duplicate seq numbers in events.jsonl", f"{len(seqs) - len(set(seqs))}",
          ok=len(seqs) == len(set(seqs)))


# -- section: secrets ----------------------------------------------------------------------------
KEY = "sk-battery-" + "7f3a9c2e5b1d4086SECRET"


def key_forms(raw: str) -> set[str]:
    forms = set()
    for v in {raw, raw.strip()}:
        forms |= {v, repr(v)[1:-1], json.dumps(v)[1:-1], urllib.parse.quote(v, safe=""),
                  base64.b64encode(v.encode()).decode()}
    forms.add(KEY[11:])  # the distinctive tail alone, however it was quoted
    return {f for f in forms if len(f) >= 8}


def _artifacts(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    for root in paths:
        if root.is_file():
            yield str(root), root.read_bytes()
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    yield str(p), p.read_bytes()


def secrets_section(b: Battery) -> None:
    data = write_data(b.work / "sec.jsonl", 40)
    forms = {"plain": KEY, "trailing newline": KEY + "\n", "trailing space": KEY + " "}
    if b.fast:
        forms = {"trailing newline": KEY + "\n"}
    total_leaks = 0
    for name, raw in forms.items():
        echo = {"n": 0}

        def rule(body: dict) -> Fault | None:  # every 7th request: an error body with the key in it
            echo["n"] += 1
            if echo["n"] % 7 == 3:
                return Fault.http(503, f"upstream rejected key {KEY}")
            if echo["n"] % 7 == 5:
                return Fault.echo_headers(502)
            return None

        with OpenAITestServer(reply=brain, api_key=KEY, fault_rule=rule) as srv:
            env = child_env(b, OPENAI_API_KEY=raw)
            run_dir = b.work / f"sec-{name.replace(' ', '-')}"
            opt = _run_cli(optimize_args(data, srv.base_url, run_dir, "--report", *(
                ["--steps", "1", "--rounds", "0"] if b.fast else [])), env)
            out = b.work / f"sec-{name.replace(' ', '-')}.json"
            ev = _run_cli(["eval", "--data", str(data), "--input", "question", "--target", "answer", "--metric",
                           "numeric", "--model", "task", "--base-url", srv.base_url, "--out", str(out),
                           "--run-dir", str(run_dir)], env)
            srv.api_key = "sk-some-other-key-000000"  # now the server rejects the key and echoes it back
            bad = _run_cli(["eval", "--data", str(data), "--input", "question", "--target", "answer", "--metric",
                            "numeric", "--model", "task", "--base-url", srv.base_url, "--out", str(out) + ".bad",
                            "--cache", str(b.work / "sec-bad.sqlite")], env)
        texts = [("optimize stdout", opt.stdout.encode()), ("optimize stderr", opt.stderr.encode()),
                 ("eval stdout", ev.stdout.encode()), ("eval stderr", ev.stderr.encode()),
                 ("401 eval stderr", bad.stderr.encode()), ("401 eval stdout", bad.stdout.encode())]
        texts += list(_artifacts([run_dir, out, b.work / "sec-bad.sqlite"]))
        leaks = [where for where, blob in texts for f in key_forms(raw) if f.encode() in blob]
        total_leaks += len(leaks)
        ran = opt.returncode == 0 and ev.returncode == 0 and bad.returncode != 0
        b.add("secrets", f"key {name}, {len(texts)} artifacts searched for {len(key_forms(raw))} forms",
              f"leaks {len(leaks)}" + (f" in {sorted(set(leaks))[:4]}" if leaks else "")
              + ("" if ran else f" (runs: optimize {opt.returncode}, eval {ev.returncode}, 401 eval {bad.returncode})"),
              ok=not leaks and ran)
    b.add("secrets", "leaks in all", str(total_leaks), ok=total_leaks == 0)


# -- section: bad input --------------------------------------------------------------------------
def _bad_input_cases(folder: Path) -> dict[str, list[str]]:
    (folder / "d.jsonl").write_text("".join(json.dumps({"q": f"{i}+1", "a": str(i + 1)}) + "\n" for i in range(20)))
    (folder / "latin1.jsonl").write_bytes(b'{"q": "1+1", "a": "2"}\n{"q": "caf\xe9", "a": "1"}\n')
    (folder / "latin1.csv").write_bytes(b"q,a\n1+1,2\ncaf\xe9,3\n")
    (folder / "empty.jsonl").write_text("")
    (folder / "blank.jsonl").write_text("\n\n")
    (folder / "header.csv").write_text("q,a\n")
    (folder / "broken.jsonl").write_text('{"q": "1", "a": "1"}\n{"q": "2", "a": \n')
    (folder / "array.jsonl").write_text('[1, 2]\n')
    (folder / "missing.jsonl").write_text('{"q": "1"}\n')
    (folder / "adir").mkdir(exist_ok=True)
    (folder / "tiny.jsonl").write_text(json.dumps({"q": "1", "a": "1"}) + "\n")
    (folder / "d.txt").write_text("q a\n")
    (folder / "wf_latin1.json").write_bytes(b'{"sketch": {}, "name": "\xe9"}')
    (folder / "wf_bad.json").write_text('{"sketch": {"inputs": ["q"], "outputs": ["a"], "nodes": [')
    (folder / "wf_empty.json").write_text("")
    (folder / "wf_kind.json").write_text(json.dumps({"sketch": {"inputs": ["q"], "outputs": ["a"], "nodes": [
        {"kind": "teleport", "id": "x", "reads": ["q"], "writes": "a"}]}}))
    (folder / "wf_cycle.json").write_text(json.dumps({"sketch": {"inputs": ["q"], "outputs": ["a"], "nodes": [
        {"kind": "llm", "id": "x", "reads": ["b"], "writes": "a"}, {"kind": "llm", "id": "y", "reads": ["a"],
                                                                   "writes": "b"}]}}))
    (folder / "wf_new.json").write_text(json.dumps({"format": "flowbot-workflow", "schema_version": 99,
                                                    "sketch": {"inputs": [], "outputs": [], "nodes": []}}))
    (folder / "task_latin1.yaml").write_bytes(b"data: d.jsonl\ninputs: [q]\ntargets: [a]\ndescription: caf\xe9\n")
    (folder / "task_bad.yaml").write_text("data: d.jsonl\ninputs: [q\n")
    (folder / "task_key.yaml").write_text("data: d.jsonl\ninputs: [q]\ntargets: [a]\nmetrc: f1\n")
    (folder / "task_nodata.yaml").write_text("inputs: [q]\ntargets: [a]\n")
    (folder / "task.toml").write_text('data = "d.jsonl"\ninputs = ["q"\n')
    (folder / "metric_syntax.py").write_text("def score(e, p)\n    return 1\n")
    (folder / "metric_none.py").write_text("x = 1\n")
    (folder / "metric_raises.py").write_text("def score(e, p):\n    raise KeyError('answer')\n")
    (folder / "metric_str.py").write_text("def score(e, p):\n    return 'yes'\n")
    (folder / "metric_nan.py").write_text("def score(e, p):\n    return float('nan')\n")
    (folder / "metric_none_value.py").write_text("def score(e, p):\n    return None\n")
    (folder / "metric_two.py").write_text("def score(e, p):\n    return 2.0\n")
    (folder / "metric_inf.py").write_text("def score(e, p):\n    return float('inf')\n")
    d = ["--data", "d.jsonl", "--input", "q", "--target", "a"]
    return {
        "workflow: not UTF-8": ["show", "wf_latin1.json"],
        "workflow: truncated JSON": ["show", "wf_bad.json"],
        "workflow: empty file": ["show", "wf_empty.json"],
        "workflow: a directory": ["run", "adir", "--input", "{}"],
        "workflow: no such file": ["eval", "--workflow", "nowhere.json", *d],
        "workflow: unknown node kind": ["show", "wf_kind.json"],
        "workflow: a cycle": ["show", "wf_cycle.json"],
        "workflow: newer schema": ["show", "wf_new.json"],
        "dataset: not UTF-8 (JSONL)": ["eval", "--data", "latin1.jsonl", "--input", "q", "--target", "a"],
        "dataset: not UTF-8 (CSV)": ["eval", "--data", "latin1.csv", "--input", "q", "--target", "a"],
        "dataset: empty": ["eval", "--data", "empty.jsonl", "--input", "q", "--target", "a"],
        "dataset: blank lines only": ["eval", "--data", "blank.jsonl", "--input", "q", "--target", "a"],
        "dataset: header-only CSV": ["eval", "--data", "header.csv", "--input", "q", "--target", "a"],
        "dataset: broken JSON line": ["eval", "--data", "broken.jsonl", "--input", "q", "--target", "a"],
        "dataset: a line that is not an object": ["eval", "--data", "array.jsonl", "--input", "q", "--target", "a"],
        "dataset: a missing field": ["eval", "--data", "missing.jsonl", "--input", "q", "--target", "a"],
        "dataset: a directory": ["eval", "--data", "adir", "--input", "q", "--target", "a"],
        "dataset: unknown file type": ["eval", "--data", "d.txt", "--input", "q", "--target", "a"],
        "dataset: too small to split (optimize)": ["optimize", "--data", "tiny.jsonl", "--input", "q", "--target", "a",
                                                   "--run-dir", "run"],
        "dataset: empty (optimize)": ["optimize", "--data", "empty.jsonl", "--input", "q", "--target", "a",
                                      "--run-dir", "run"],
        "config: task file not UTF-8": ["eval", "--task-file", "task_latin1.yaml"],
        "config: task file bad YAML": ["eval", "--task-file", "task_bad.yaml"],
        "config: task file unknown key": ["eval", "--task-file", "task_key.yaml"],
        "config: task file without data": ["eval", "--task-file", "task_nodata.yaml"],
        "config: task file bad TOML": ["eval", "--task-file", "task.toml"],
        "config: task file is a directory": ["eval", "--task-file", "adir"],
        "metric: unknown name": ["eval", *d, "--metric", "accuracyy"],
        "metric: file with a syntax error": ["eval", *d, "--metric", "metric_syntax.py:score"],
        "metric: no such function": ["eval", *d, "--metric", "metric_none.py:score"],
        "metric: raises on every example": ["eval", *d, "--metric", "metric_raises.py:score"],
        "metric: returns a string": ["eval", *d, "--metric", "metric_str.py:score"],
        "metric: returns NaN": ["eval", *d, "--metric", "metric_nan.py:score"],
        "metric: returns None": ["eval", *d, "--metric", "metric_none_value.py:score"],
        "metric: returns 2.0": ["eval", *d, "--metric", "metric_two.py:score"],
        "metric: returns inf": ["eval", *d, "--metric", "metric_inf.py:score"],
        "metric: broken, during optimize": ["optimize", *d, "--metric", "metric_two.py:score", "--run-dir", "run"],
        "option: negative budget": ["optimize", *d, "--budget-calls", "-5", "--run-dir", "run"],
        "option: zero dollars": ["optimize", *d, "--budget-usd", "0", "--run-dir", "run"],
        "option: negative steps": ["optimize", *d, "--steps", "-1", "--run-dir", "run"],
        "option: negative rounds": ["optimize", *d, "--rounds", "-2", "--run-dir", "run"],
        "option: zero minibatch": ["optimize", *d, "--minibatch", "0", "--run-dir", "run"],
        "option: zero validation size": ["optimize", *d, "--val-size", "0", "--run-dir", "run"],
        "option: negative limit": ["eval", *d, "--limit", "-1"],
        "option: zero concurrency": ["eval", *d, "--concurrency", "0"],
        "option: negative --workers": ["eval", *d, "--workers", "-1"],
        "option: zero --margin": ["optimize", *d, "--margin", "0", "--run-dir", "run"],
        "option: --alpha above 1": ["optimize", *d, "--alpha", "1.5", "--run-dir", "run"],
        "option: --feedback typo": ["optimize", *d, "--feedback", "local", "--run-dir", "run"],
        "option: --method typo": ["optimize", *d, "--method", "aflw", "--run-dir", "run"],
        "option: --objective typo": ["optimize", *d, "--objective", "costs", "--run-dir", "run"],
        "option: --split typo": ["eval", *d, "--split", "tst"],
        "option: --sandbox typo": ["eval", *d, "--sandbox", "jail"],
        "option: --format typo": ["show", "wf.json", "--format", "svg"],
        "option: --input not JSON": ["run", "wf.json", "--input", "{question: 1}"],
        "run: missing input field": ["run", "wf.json", "--input", '{"x": 1}'],
        "option: two task sources": ["eval", *d, "--task", "gsm8k"],
        "option: --data without --target": ["eval", "--data", "d.jsonl", "--input", "q"],
    }


def bad_input(b: Battery) -> None:
    from typer.testing import CliRunner

    import flowbot
    from flowbot.api import resolve_seed
    from flowbot.cli.main import app

    folder = b.work / "input"
    folder.mkdir(exist_ok=True)
    cases = _bad_input_cases(folder)
    if b.fast:
        cases = {k: v for i, (k, v) in enumerate(cases.items()) if i % 4 == 0}
    here = os.getcwd()
    os.chdir(folder)
    clean = left = 0
    try:
        task = flowbot.Task("t", data="d.jsonl", inputs=["q"], targets=["a"])
        flowbot.RunnableWorkflow.from_ir(resolve_seed("io", task)).save("wf.json")
        with OpenAITestServer(reply="Answer: 2") as srv:
            for name, args in cases.items():
                args = [*args, "--model", "m", "--base-url", srv.base_url] if args[0] in ("eval", "optimize", "run") \
                    else args
                before = sorted(os.listdir("."))
                res = CliRunner().invoke(app, args)
                lines = [ln for ln in (res.stderr or "").splitlines() if ln.strip()]
                one_line = res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: ") \
                    and "Traceback" not in res.output
                extra = sorted(set(os.listdir(".")) - set(before))
                for x in extra:
                    shutil.rmtree(x, ignore_errors=True) if os.path.isdir(x) else os.unlink(x)
                clean += one_line
                left += len(extra)
                if not one_line or extra or not b.fast:
                    said = lines[0] if len(lines) == 1 else f"{len(lines)} lines, exit {res.exit_code}"
                    b.add("input", name, said[:150] + (f" (left {extra})" if extra else ""),
                          ok=one_line and not extra)
    finally:
        os.chdir(here)
    b.add("input", "clean one-line errors", f"{clean}/{len(cases)}", ok=clean == len(cases))
    b.add("input", "partial files left", str(left), ok=left == 0)


# -- section: hostile code -----------------------------------------------------------------------
@dataclass
class Attack:
    name: str
    code: str  # formatted with the run's context (paths, ports, tokens)
    stopped: Callable[[Any, dict], bool]  # (SandboxResult, context) -> was it stopped?
    process_stops: bool = False  # the no-boundary "process" level claims to stop it without the guard
    limits: dict = field(default_factory=dict)
    #: a guard bypass: the code switches the audit guard off itself (run with the guard on only),
    #: then tries the escapes of BYPASS_PROBE; stopped when none of them got out
    bypass: bool = False


def _attacks() -> list[Attack]:
    def host_file_absent(res: Any, ctx: dict) -> bool:
        return not os.path.exists(ctx["target"]) and "WROTE" not in res.stdout

    def secret_kept(res: Any, ctx: dict) -> bool:
        return ctx["secret_text"] not in res.stdout and "secret.txt" not in res.stdout

    def no_connection(res: Any, ctx: dict) -> bool:
        return ctx["accepted"]() == 0 and "CONNECTED" not in res.stdout

    def no_survivor(res: Any, ctx: dict) -> bool:
        time.sleep(0.15)
        return not ctx["survivors"]()

    def not_over(limit_mb: int) -> Callable[[Any, dict], bool]:
        def check(res: Any, ctx: dict) -> bool:
            m = re.search(r"WROTE (\d+)", res.stdout)
            return res.killed_reason is not None or (m is not None and int(m.group(1)) <= limit_mb + 8)
        return check

    def planted_key_hidden(res: Any, ctx: dict) -> bool:
        return ctx["key"] not in res.stdout and "FOUND" not in res.stdout

    def stopped_by_limit(res: Any, ctx: dict) -> bool:  # a limit, the kernel's fork refusal or the guard's
        return not res.timed_out and (res.killed_reason is not None or any(
            e in res.stderr for e in ("MemoryError", "BlockingIOError", "PermissionError")))

    def no_signal(res: Any, ctx: dict) -> bool:
        time.sleep(0.05)
        return ctx["signals"]() == 0

    return [
        Attack("fork bomb", "import os\nwhile True:\n    os.fork()", stopped_by_limit, process_stops=False,
               limits={"max_processes": 8, "memory_mb": 128, "timeout_s": 5}),
        Attack("40 live processes (limit 8)", textwrap.dedent("""
            import os, time
            n = 0
            for _ in range(40):
                try:
                    if os.fork() == 0:
                        time.sleep(5); os._exit(0)
                    n += 1
                except OSError:
                    break
            time.sleep(1)
            print("HELD", n)
            """), lambda res, ctx: not re.search(r"HELD (\d+)", res.stdout)
               or int(re.search(r"HELD (\d+)", res.stdout).group(1)) <= 9,
               process_stops=True, limits={"max_processes": 8}),
        Attack("write a file outside its folder", "open({target!r}, 'w').write('x'); print('WROTE')", host_file_absent),
        Attack("write into the Python installation", "open({pyfile!r}, 'w').write('x'); print('WROTE')",
               lambda res, ctx: not os.path.exists(ctx["pyfile"]) and "WROTE" not in res.stdout),
        Attack("delete a file outside its folder", "import os; os.remove({victim!r}); print('REMOVED')",
               lambda res, ctx: os.path.exists(ctx["victim"]) and "REMOVED" not in res.stdout),
        Attack("read a file outside its folder", "print(open({secret!r}).read())", secret_kept),
        Attack("list a folder outside its own", "import os; print(os.listdir({secret_dir!r}))", secret_kept),
        Attack("read a file through a symlink", "import os\nos.symlink({secret!r}, 'l')\nprint(open('l').read())",
               secret_kept),
        # The key-hunting snippets only look as far up as the battery's worker process (the
        # process that holds the planted key): never into other processes of the machine.
        Attack("read the parent's /proc/<pid>/environ for the key", textwrap.dedent("""
            import os
            pid, out = os.getppid(), []
            for _ in range(8):
                try:
                    out.append(open(f"/proc/{{pid}}/environ", "rb").read())
                    if pid == {worker}:
                        break
                    pid = int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError):
                    break
            print("FOUND" if any(b"BATTERY-PLANTED" in x for x in out) else "clean", len(out))
            """), planted_key_hidden, process_stops=True),
        Attack("read the worker's /proc/<pid>/environ by pid", textwrap.dedent("""
            try:
                data = open("/proc/{worker}/environ", "rb").read()
                print("FOUND" if b"BATTERY-PLANTED" in data else "clean")
            except OSError as exc:
                print("clean", type(exc).__name__)
            """), planted_key_hidden, process_stops=True),
        Attack("read the worker's memory for the key", textwrap.dedent("""
            found = False
            try:
                maps = open("/proc/{worker}/maps").read().splitlines()
                mem = open("/proc/{worker}/mem", "rb", 0)
            except OSError:
                maps = []
            for line in maps:
                if "rw-p" not in line:
                    continue
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if hi - lo > 1 << 26:
                    continue
                try:
                    mem.seek(lo)
                    if b"BATTERY-PLANTED" in mem.read(hi - lo):
                        found = True
                        break
                except (OSError, ValueError, OverflowError):
                    continue
            print("FOUND" if found else "clean")
            """), planted_key_hidden, limits={"timeout_s": 20}),
        Attack("connect to a listener on 127.0.0.1",
               "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('CONNECTED')",
               no_connection),
        Attack("send UDP to 127.0.0.1",
               "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
               "s.sendto(b'x', ('127.0.0.1', {udp_port}))\nprint('SENT')",
               lambda res, ctx: ctx["udp_received"]() == 0),
        Attack("start a program (subprocess)", "import subprocess\nsubprocess.run(['/usr/bin/touch', {target!r}])",
               host_file_absent),
        Attack("start a program (os.system)", "import os\nos.system('touch {target}')", host_file_absent),
        Attack("start a program (exec)", "import os\nos.execv('/usr/bin/touch', ['touch', {target!r}])",
               host_file_absent),
        Attack("a setsid child outliving the run", textwrap.dedent("""
            import os, time
            if os.fork() == 0:
                os.setsid()
                os.execv("/bin/sleep", ["sleep", {token!r}])
            time.sleep(0.3)
            """), no_survivor, process_stops=True),
        Attack("a double-forked daemon outliving the run", textwrap.dedent("""
            import os, time
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(0.2)
                    os.execv("/bin/sleep", ["sleep", {token!r}])
                os._exit(0)
            time.sleep(0.6)
            """), no_survivor, process_stops=True),
        Attack("disk: 160 MB in 8 MB files (limit 32 MB)", textwrap.dedent("""
            written = 0
            try:
                for i in range(20):
                    with open(f"f{{i}}.bin", "wb") as f:
                        f.write(b"x" * (8 << 20))
                    written += 8
            except OSError:
                pass
            print("WROTE", written)
            """), not_over(32), process_stops=True, limits={"disk_mb": 32}),
        Attack("disk: one 100 MB file (limit 32 MB)", textwrap.dedent("""
            written = 0
            try:
                with open("big.bin", "wb") as f:
                    for _ in range(100):
                        f.write(b"x" * (1 << 20)); f.flush(); written += 1
            except OSError:
                pass
            print("WROTE", written)
            """), not_over(32), process_stops=True, limits={"disk_mb": 32}),
        Attack("disk: 100 MB into /dev/shm (limit 32 MB)", textwrap.dedent("""
            import os
            written = 0
            try:
                with open("/dev/shm/flowbot-battery-{token}", "wb") as f:
                    for _ in range(100):
                        f.write(b"x" * (1 << 20)); f.flush(); written += 1
            except OSError:
                pass
            print("WROTE", written)
            """), lambda res, ctx: _shm_cleanup(ctx) and not_over(32)(res, ctx), limits={"disk_mb": 32}),
        Attack("memory: 6 processes x 100 MB (limit 256 MB)", textwrap.dedent("""
            import os, time
            for _ in range(5):
                if os.fork() == 0:
                    break
            block = bytearray(100 << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(2)
            print("HELD")
            """), lambda res, ctx: "HELD" not in res.stdout, process_stops=True,
               limits={"memory_mb": 256, "max_processes": 8}),
        Attack("memory: 1 GB in one process (limit 256 MB)", "x = bytearray(1 << 30)\nprint('HELD')",
               lambda res, ctx: "HELD" not in res.stdout, process_stops=True, limits={"memory_mb": 256}),
        Attack("raise its own limits, then allocate 1 GB", textwrap.dedent("""
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            x = bytearray(1 << 30)
            print("HELD")
            """), lambda res, ctx: "HELD" not in res.stdout, limits={"memory_mb": 256}),
        Attack("signal the worker process (SIGUSR1 by pid)", textwrap.dedent("""
            import os, signal
            try:
                os.kill({worker}, signal.SIGUSR1)
            except OSError as exc:
                print(type(exc).__name__)
            """), no_signal),
        Attack("an endless loop", "while True:\n    pass", lambda res, ctx: res.timed_out, process_stops=True,
               limits={"timeout_s": 1}),
        Attack("an output flood", "while True:\n    print('x' * 1000)",
               lambda res, ctx: res.killed_reason == "output_limit", process_stops=True),
        *_more_attacks(host_file_absent, secret_kept, planted_key_hidden, no_signal, no_survivor, not_over),
        *_bypass_attacks(),
    ]


def _more_attacks(host_file_absent: Callable, secret_kept: Callable, planted_key_hidden: Callable,
                  no_signal: Callable, no_survivor: Callable, not_over: Callable) -> list[Attack]:
    """Further ways out: secrets through /proc, other sockets, writes and programs by other calls,
    resources in total, signals, ptrace, links."""
    def unix_refused(counter: str) -> Callable[[Any, dict], bool]:
        return lambda res, ctx: ctx[counter]() == 0 and "CONNECTED" not in res.stdout

    return [
        Attack("look for a key in its own environment", textwrap.dedent("""
            import os
            hit = [k for k, v in os.environ.items() if k.endswith(("_KEY", "_TOKEN")) or "BATTERY-PLANTED" in v]
            print("FOUND" if hit else "clean", sorted(os.environ))
            """), planted_key_hidden, process_stops=True),
        Attack("read a host file through /proc/<worker>/root", "print(open('/proc/{worker}/root{secret}').read())",
               secret_kept),
        Attack("read a file the worker holds open (/proc/<worker>/fd)", textwrap.dedent("""
            import os
            for fd in os.listdir("/proc/{worker}/fd"):
                try:  # files only: reading its pipes would take what the worker writes to its parent
                    if os.path.isfile(os.readlink(f"/proc/{worker}/fd/{{fd}}")):
                        print(open(f"/proc/{worker}/fd/{{fd}}", errors="replace").read(200))
                except OSError:
                    pass
            """), secret_kept),
        # "outside" without leaving the machine: a listener on this host's own network address
        Attack("connect to this host's network address (not loopback)", textwrap.dedent("""
            import socket
            s = socket.create_connection(({host_ip!r}, {host_port}), timeout=2)
            print("CONNECTED")
            """), lambda res, ctx: ctx["host_accepted"]() == 0 and "CONNECTED" not in res.stdout),
        Attack("resolve a host name", textwrap.dedent("""
            import socket
            print("RESOLVED", socket.getaddrinfo("localhost", 80)[0][4])
            """), lambda res, ctx: "RESOLVED" not in res.stdout),
        Attack("connect to the worker's abstract unix socket", textwrap.dedent("""
            import socket
            s = socket.socket(socket.AF_UNIX)
            s.connect({abstract!r})
            print("CONNECTED")
            """), unix_refused("abstract_accepted")),
        Attack("connect to a unix socket file outside its folder", textwrap.dedent("""
            import socket
            s = socket.socket(socket.AF_UNIX)
            s.connect({unix_path!r})
            print("CONNECTED")
            """), unix_refused("unix_accepted")),
        Attack("write outside through a directory fd", textwrap.dedent("""
            import os
            d = os.open({target_dir!r}, os.O_RDONLY)
            f = os.open({target_name!r}, os.O_WRONLY | os.O_CREAT, dir_fd=d)
            os.write(f, b"x")
            print("WROTE")
            """), host_file_absent),
        Attack("move a file out of its folder (rename)",
               "open('x', 'w').write('x')\nimport os\nos.rename('x', {target!r})\nprint('WROTE')", host_file_absent),
        Attack("hard-link a host file into its folder",
               "import os\nos.link({secret!r}, 'l')\nprint(open('l').read())", secret_kept),
        Attack("symlink a host folder, then write through it", textwrap.dedent("""
            import os
            os.symlink({target_dir!r}, "d")
            open("d/" + {target_name!r}, "w").write("x")
            print("WROTE")
            """), host_file_absent),
        Attack("start a program (os.posix_spawn)", textwrap.dedent("""
            import os
            pid = os.posix_spawn("/usr/bin/touch", ["touch", {target!r}], {{}})
            os.waitpid(pid, 0)
            """), host_file_absent),
        Attack("start a program through libc (ctypes system())", textwrap.dedent("""
            import ctypes
            ctypes.CDLL(None).system(b"/usr/bin/touch {target}")
            """), host_file_absent),
        Attack("fd exhaustion: open files until refused (limit 256)", textwrap.dedent("""
            import os
            fds = []
            try:
                while len(fds) < 100000:
                    fds.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            print("OPENED", len(fds))
            """), lambda res, ctx: not re.search(r"OPENED (\d+)", res.stdout)
               or int(re.search(r"OPENED (\d+)", res.stdout).group(1)) <= 256, process_stops=True),
        Attack("disk: 4 processes x 16 MB (limit 32 MB in total)", textwrap.dedent("""
            import os, time
            me = 0
            for i in range(1, 4):
                if os.fork() == 0:
                    me = i
                    break
            written = 0
            try:
                with open(f"p{{me}}.bin", "wb") as f:
                    for _ in range(16):
                        f.write(b"x" * (1 << 20)); f.flush(); written += 1
                        time.sleep(0.02)
            except OSError:
                pass
            time.sleep(1)
            print("WROTE", written)
            """), lambda res, ctx: res.killed_reason is not None
               or sum(int(x) for x in re.findall(r"WROTE (\d+)", res.stdout)) <= 40,
               process_stops=True, limits={"disk_mb": 32, "max_processes": 8}),
        Attack("signal the worker's process group (killpg)", textwrap.dedent("""
            import os, signal
            try:
                group = os.getpgid({worker})
                if group == {worker}:  # only the battery's worker leads that group: signal nothing else
                    os.killpg(group, signal.SIGUSR1)
                    print("SENT")
            except OSError as exc:
                print(type(exc).__name__)
            """), no_signal),
        Attack("signal every ancestor up to the worker", textwrap.dedent("""
            import os, signal
            chain, pid = [], os.getppid()
            for _ in range(8):
                chain.append(pid)
                if pid == {worker} or pid <= 1:
                    break
                try:
                    pid = int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError):
                    break
            if {worker} in chain:  # never anything above the battery's worker
                for pid in [{worker}] + [p for p in chain if p != {worker}]:
                    try:
                        os.kill(pid, signal.SIGUSR1)
                        print("SENT", pid)
                    except OSError as exc:
                        print(type(exc).__name__)
            else:
                print("the worker is not an ancestor", chain)
            """), no_signal),
        Attack("ptrace the worker (PTRACE_SEIZE through ctypes)", textwrap.dedent("""
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.ptrace(0x4206, {worker}, 0, 0) == 0:  # a seize does not stop it; exiting detaches
                print("ATTACHED")
            else:
                print("refused, errno", ctypes.get_errno())
            """), lambda res, ctx: "ATTACHED" not in res.stdout),
        Attack("kill its launcher, leaving a setsid child", textwrap.dedent("""
            import os, signal, time
            if os.fork() == 0:
                os.setsid()
                time.sleep(0.2)
                os.execv("/bin/sleep", ["sleep", {token!r}])
            time.sleep(0.05)
            launcher = os.getppid()
            try:
                os.setpgid(0, launcher)
            except OSError:
                pass
            for kill in (lambda: os.kill(launcher, signal.SIGKILL),
                         lambda: os.killpg(os.getpgid(launcher), signal.SIGKILL)):
                try:
                    kill()
                except OSError as exc:
                    print(type(exc).__name__)
            time.sleep(0.5)
            """), no_survivor, process_stops=True),
    ]


#: What a guard bypass tries once it believes the guard is off: read a host file, write one, connect
#: to the worker's listener, start a program. Names it needs are bound before the bypass runs (some
#: bypasses replace builtins).
BYPASS_PRELUDE = "import os as _os, socket as _socket\n_open, _print, _E = open, print, Exception\n"
BYPASS_PROBE = textwrap.dedent("""
    def _probe():
        said = []
        try:
            _os.listdir("/")
            said.append("GUARD-OFF")
        except _E:
            pass
        try:
            if {secret_text!r} in _open({secret!r}).read():
                said.append("READ")
        except _E:
            pass
        try:
            _open({target!r}, "w").write("x")
            said.append("WROTE")
        except _E:
            pass
        try:
            _socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            said.append("CONNECTED")
        except _E:
            pass
        try:
            if _os.system("/usr/bin/touch {target2}") == 0:
                said.append("RAN")
        except _E:
            pass
        _print("PROBE", *said)
    _probe()
    """)

#: the guard's deny() found through the frames of a traceback the guard itself raised
_DENY_FROM_TRACEBACK = textwrap.dedent("""
    try:
        open("/etc/hostname")
    except PermissionError as exc:
        tb, frames = exc.__traceback__, []
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
    hook = next(f for f in frames if f.f_code.co_name == "hook")
    deny = hook.f_locals["deny"]

    def _quiet():
        _PermissionError = None

        def deny(what, path=None):
            _PermissionError  # (the same one free variable as the guard's deny)
        return deny
    """)


def _bypass_attacks() -> list[Attack]:
    """Code that tries to switch the audit guard off from inside, then escape (BYPASS_PROBE). On
    "process" some of these succeed: that level is no boundary, and the figure says so."""
    def contained(res: Any, ctx: dict) -> bool:
        return ("READ" not in res.stdout and ctx["secret_text"] not in res.stdout and ctx["accepted"]() == 0
                and not os.path.exists(ctx["target"]) and not os.path.exists(ctx["target2"]))

    snippets = {
        "bypass: rewrite the guard's deny() found in a traceback's frames":
            _DENY_FROM_TRACEBACK + "deny.__code__ = _quiet().__code__\n",
        "bypass: rewrite a closure cell of the guard's path resolver": _DENY_FROM_TRACEBACK + textwrap.dedent("""
            work = _os.getcwd()
            for cell in hook.f_locals["check"].__closure__:
                if getattr(cell.cell_contents, "__name__", "") == "resolve":
                    for inner in cell.cell_contents.__closure__:
                        if getattr(inner.cell_contents, "__name__", "") == "realpath":
                            inner.cell_contents = lambda p, w=work: w + "/x"
            """),
        "bypass: catch the guard's frames from a __fspath__ it calls": textwrap.dedent("""
            import shutil, sys
            found = {{}}

            class Path:
                def __fspath__(self):
                    f = sys._getframe(1)
                    while f is not None and f.f_code.co_name != "hook":
                        f = f.f_back
                    if f is not None:
                        found["deny"] = f.f_locals["deny"]
                    return "/nonexistent-flowbot-battery"
            try:
                shutil.rmtree(Path())
            except Exception:
                pass

            def _quiet():
                _PermissionError = None

                def deny(what, path=None):
                    _PermissionError
                return deny
            if "deny" in found:
                found["deny"].__code__ = _quiet().__code__
            """),
        "bypass: ctypes raw memory (pointer indexing) swaps deny()'s code": _DENY_FROM_TRACEBACK + textwrap.dedent("""
            import ctypes
            KEEP = [_quiet().__code__]
            cell = ctypes.c_size_t(0)
            ptr, base = ctypes.pointer(cell), ctypes.addressof(cell)
            for offset in range(16, 120, 8):  # where func_code sits in the function object
                i = (id(deny) + offset - base) // 8
                if ptr[i] == id(deny.__code__):
                    ptr[i] = id(KEEP[0])
                    break
            """),
        "bypass: monkeypatch os.fspath, which the guard's realpath calls": textwrap.dedent("""
            import os
            work = os.getcwd()
            os.fspath = lambda p, w=work: w + "/x"
            """),
        "bypass: monkeypatch posixpath internals before the guard checks": textwrap.dedent("""
            import os, posixpath
            work = os.getcwd()
            posixpath.abspath = lambda p, w=work: w + "/x"
            """),
        "bypass: replace builtins the guard uses": textwrap.dedent("""
            import builtins

            class Quiet(Exception):
                pass
            builtins.PermissionError = Quiet
            builtins.any = lambda it: False
            """),
        "bypass: a fresh _posixsubprocess (the guard replaced fork_exec)": textwrap.dedent("""
            import importlib.util, sys
            fresh = importlib.util.module_from_spec(sys.modules["_posixsubprocess"].__spec__)
            r, w = _os.pipe()
            fresh.fork_exec([b"/usr/bin/touch", {target2!r}.encode()], [b"/usr/bin/touch"], True, (w,), None, None,
                            -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, None, -1, None, False)
            """),
        "bypass: import _posixsubprocess directly": textwrap.dedent("""
            import _posixsubprocess
            r, w = _os.pipe()
            _posixsubprocess.fork_exec([b"/usr/bin/touch", {target2!r}.encode()], [b"/usr/bin/touch"], True, (w,),
                                       None, None, -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None,
                                       None, -1, None, False)
            """),
        "bypass: gc walk to the guard's closure": textwrap.dedent("""
            import gc
            for obj in gc.get_referrers(PermissionError):
                if callable(obj) and getattr(obj, "__name__", "") == "deny":
                    obj.__code__ = (lambda what, path=None: None).__code__
            """),
        "bypass: a sub-interpreter (Python audit hooks are per interpreter)": textwrap.dedent("""
            import _xxsubinterpreters as interpreters
            interpreters.run_string(interpreters.create(), "open({target!r}, 'w').write('x')")
            """),
        "bypass: sys.addaudithook a hook of its own first in line": textwrap.dedent("""
            import sys
            sys.addaudithook(lambda event, args: None)  # hooks only add up: the guard's still runs
            """),
    }
    return [Attack(name, BYPASS_PRELUDE + "try:\n" + textwrap.indent(code, "    ") + "\nexcept _E as exc:\n"
                   "    _print('bypass failed:', exc.__class__.__name__)\n" + BYPASS_PROBE, contained, bypass=True)
            for name, code in snippets.items()]


def _shm_cleanup(ctx: dict) -> bool:
    path = f"/dev/shm/flowbot-battery-{ctx['token']}"
    if os.path.exists(path):
        os.unlink(path)
    return True


def hostile(b: Battery) -> None:
    """Each available level in a worker process whose environment holds a planted key."""
    from flowbot.tools.sandbox import sandbox_levels

    levels = asyncio.run(sandbox_levels())
    for level, missing in levels.items():
        if missing:
            b.add("hostile", f"{level} level", f"unavailable here ({missing})")
            continue
        env = {**os.environ, "FLOWBOT_PLANTED_API_KEY": "sk-BATTERY-PLANTED-" + pysecrets.token_hex(6),
               "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--hostile-worker", level] + (["--fast"] if b.fast else [])
        # its own session and process group: what a snippet signals by group is the worker alone
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, start_new_session=True)
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            b.add("hostile", f"{level} level", f"worker failed (exit {proc.returncode}): {proc.stderr[-400:]}", ok=False)
            continue
        for line in result["misses"]:
            print(f"    ({level}: {line})")
        weak = level == "process"
        n_attacks, n_bypass = result["attacks"], result["bypass"][2]
        b.add("hostile", f"{level}: snippets", f"{n_attacks + n_bypass} ({n_attacks} attacks, {n_bypass} guard bypasses)",
              ok=None if b.fast else n_attacks + n_bypass >= 40)
        b.add("hostile", f"{level}: stopped with the guard on", f"{result['guard_on'][0]}/{result['guard_on'][1]}",
              ok=result["guard_on"][0] == result["guard_on"][1])
        what = "stopped with the guard off" + (" (no boundary: only what this level claims)" if weak else "")
        b.add("hostile", f"{level}: {what}", f"{result['claimed'][0]}/{result['claimed'][1]}",
              ok=result["claimed"][0] == result["claimed"][1])
        if weak:
            b.add("hostile", f"{level}: stopped with the guard off, all snippets",
                  f"{result['guard_off'][0]}/{result['guard_off'][1]} (expected: this level is no boundary)")
        switched, escaped, tried = result["bypass"]
        b.add("hostile", f"{level}: guard bypasses from inside the code",
              f"switched the guard off {switched}/{tried}, escaped after it {escaped}/{tried}"
              + (" (expected: this level is no boundary, the guard is a tripwire)" if weak else
                 " (the kernel boundary held)" if escaped == 0 else ""),
              ok=None if weak else escaped == 0)
        left, unclaimed = result["left"], result["left_unclaimed"]
        b.add("hostile", f"{level}: snippets run / parent healthy after each / processes left",
              f"{result['total']} / {result['healthy']}/{result['total']} / {left}"
              + (f" ({unclaimed} after snippets this level does not claim to stop)" if unclaimed else ""),
              ok=result["healthy"] == result["total"] and left - unclaimed == 0)


FAST_HOSTILE = ("read the worker's /proc/<pid>/environ by pid", "a setsid child outliving the run",
                "connect to a listener on 127.0.0.1", "write a file outside its folder",
                "start a program (subprocess)", "kill its launcher, leaving a setsid child",
                "bypass: rewrite the guard's deny() found in a traceback's frames",
                "bypass: monkeypatch os.fspath, which the guard's realpath calls")


def hostile_worker(level: str, fast: bool) -> None:
    """Runs in its own process (the planted key is in its environment block). It is a child
    subreaper, so every process a run leaves behind, detached or not, ends up below it and is
    counted: processes left are its live descendants once a run has returned."""
    import ctypes
    import socket

    from flowbot.tools.sandbox import run_python

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    key = os.environ["FLOWBOT_PLANTED_API_KEY"]
    box = Path(tempfile.mkdtemp(prefix="flowbot-battery-box-"))
    secret_dir = box / "private"
    secret_dir.mkdir()
    secret_text = "BATTERY-SECRET-" + pysecrets.token_hex(6)
    (secret_dir / "secret.txt").write_text(secret_text)
    held = open(secret_dir / "secret.txt")  # an fd the worker keeps open  # noqa: SIM115
    victim = box / "victim.txt"
    victim.write_text("keep me")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    abstract_name = "\0flowbot-battery-" + pysecrets.token_hex(6)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(abstract_name)
    abstract.listen(8)
    abstract.setblocking(False)
    host_ip = _host_address()
    outside = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    outside.bind((host_ip, 0))
    outside.listen(8)
    outside.setblocking(False)
    unix_path = str(box / "listener.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    unix.listen(8)
    unix.setblocking(False)
    signals = [0]
    signal.signal(signal.SIGUSR1, lambda *a: signals.__setitem__(0, signals[0] + 1))

    def drained(sock: socket.socket) -> Callable[[], int]:
        def count() -> int:
            n = 0
            while True:
                try:
                    conn = sock.accept()[0] if sock.type == socket.SOCK_STREAM else None
                    if conn is None:
                        sock.recvfrom(64)
                    else:
                        conn.close()
                    n += 1
                except (BlockingIOError, OSError):
                    return n
        return count

    accepted, udp_received = drained(listener), drained(udp)
    abstract_accepted, unix_accepted, host_accepted = drained(abstract), drained(unix), drained(outside)
    pyfile = os.path.join(os.path.dirname(os.__file__), f"flowbot_battery_{pysecrets.token_hex(4)}.py")
    attacks = _attacks()
    if fast:
        attacks = [a for a in attacks if a.name in FAST_HOSTILE]
    counts = {"guard_on": [0, 0], "guard_off": [0, 0], "claimed": [0, 0]}
    bypass = [0, 0, 0]  # switched the guard off, escaped, tried
    healthy = total = left = left_unclaimed = 0
    misses: list[str] = []
    for attack in attacks:
        for guard in ((True,) if attack.bypass else (True, False)):
            if not guard and level == "process" and attack.name == "fork bomb" and os.geteuid() == 0:
                continue  # root on the process level has no process limit at all: not on a shared machine
            token = f"{random.randint(10**6, 2 * 10**6)}.5"
            target = str(box / f"planted-{token}")
            ctx = {"target": target, "target2": str(box / f"planted2-{token}"), "target_dir": str(box),
                   "target_name": f"planted-{token}", "secret": str(secret_dir / "secret.txt"),
                   "secret_dir": str(secret_dir), "secret_text": secret_text, "victim": str(victim),
                   "port": listener.getsockname()[1], "udp_port": udp.getsockname()[1], "token": token, "key": key,
                   "pyfile": pyfile, "worker": os.getpid(), "abstract": abstract_name, "unix_path": unix_path,
                   "accepted": accepted, "udp_received": udp_received, "abstract_accepted": abstract_accepted,
                   "unix_accepted": unix_accepted, "host_accepted": host_accepted, "host_ip": host_ip,
                   "host_port": outside.getsockname()[1], "signals": lambda: signals[0],
                   "survivors": lambda token=token: _live_processes(token)}
            signals[0] = 0
            accepted(), udp_received(), abstract_accepted(), unix_accepted(), host_accepted()
            code = attack.code.format(**{k: v for k, v in ctx.items() if isinstance(v, (str, int))})
            limits = {"timeout_s": 5, **attack.limits}
            res = asyncio.run(run_python(code, isolation=level, audit_guard=guard, **limits))
            stopped = bool(attack.stopped(res, ctx))
            for path in (target, ctx["target2"], pyfile):
                if os.path.exists(path):
                    os.unlink(path)
            if not victim.exists():
                victim.write_text("keep me")
            claimed = (guard and not attack.bypass) or (not guard and (level != "process" or attack.process_stops)) \
                or (attack.bypass and level != "process")
            if attack.bypass:
                bypass[0] += "GUARD-OFF" in res.stdout
                bypass[1] += not stopped
                bypass[2] += 1
            else:
                bucket = "guard_on" if guard else "guard_off"
                counts[bucket][0] += stopped
                counts[bucket][1] += 1
                if not guard and claimed:
                    counts["claimed"][0] += stopped
                    counts["claimed"][1] += 1
            if not stopped and claimed:
                misses.append(f"NOT stopped: {attack.name}, guard {'on' if guard else 'off'}: "
                              f"{res.stdout.strip()[:80]!r} {res.stderr.strip()[-120:]!r}")
            elif not stopped:
                misses.append(f"not stopped, as documented for this level: {attack.name}"
                              + ("" if attack.bypass else " (guard off)") + f": {res.stdout.strip()[-60:]!r}")
            n_left = _leftovers(token)
            left += n_left
            left_unclaimed += 0 if claimed else n_left
            if n_left:
                misses.append(f"{n_left} process(es) left by: {attack.name}, guard {'on' if guard else 'off'}")
            ok = asyncio.run(run_python("print(6 * 7)", isolation=level))
            healthy += ok.ok and ok.stdout == "42\n"
            left += _leftovers(token)
            total += 1
    held.close()
    shutil.rmtree(box, ignore_errors=True)
    print(json.dumps({**counts, "attacks": len([a for a in attacks if not a.bypass]), "bypass": bypass,
                      "healthy": healthy, "total": total, "left": left, "left_unclaimed": left_unclaimed,
                      "misses": misses}))


def _host_address() -> str:
    """This host's address on its default route (a UDP connect sends nothing), else 127.0.0.1."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def _live_processes(token: str) -> list[int]:
    """Live (not zombie) processes a run left: the worker's descendants (it is a subreaper, so a
    detached process comes back below it), and any process anywhere running ``sleep <token>``."""
    from flowbot.tools.proctree import descendants, parents

    me = os.getpid()
    below = [p for p in descendants(me, parents()) if p != me]
    return sorted(p for p in set(below) | set(_sleepers(token, kill=False)) if _state(p) not in ("", "Z", "X"))


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _leftovers(token: str, grace_s: float = 0.5) -> int:
    """How many processes outlived the run that just returned (given ``grace_s`` to finish dying);
    all of them are killed, whatever the figure says."""
    end = time.monotonic() + grace_s
    while True:
        _reap()
        live = _live_processes(token)
        if not live or time.monotonic() > end:
            break
        time.sleep(0.02)
    for pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.05 if live else 0)
    _reap()
    return len(live)


def _sleepers(token: str, kill: bool = True) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if f"sleep {token}" in cmd:
                found.append(int(entry))
    for pid in found if kill else ():  # never leave them running, whatever the figure says
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return found


# -- starved: the MATH metric's verdicts on a machine whose cores are busy ------------------------
#: answers math-verify must decide (the string fallback cannot), with the right verdict
STARVED_PAIRS = [
    (r"(3,\pi/2)", r"\left( 3, \frac{\pi}{2} \right)", True),
    ("(x+1)^2", "x^2+2x+1", True),
    (r"\sqrt{8}", r"2\sqrt{2}", True),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", True),
    ("x^2", "x^3", False),
    (r"\frac{2}{3}", "0.6", False),
]
_STARVED_CHECKER = (
    "import json, sys\n"
    "from flowbot.tasks.metrics import math_equiv\n"
    "pairs = json.loads(sys.argv[1])\n"
    "print(json.dumps([math_equiv(p, g, timeout=1) for p, g in pairs]))\n"
)


def starved(b: Battery) -> None:
    pairs = STARVED_PAIRS[:3] if b.fast else STARVED_PAIRS
    # one busy process per CPU this process may run on (not the host's count, which a container may
    # not have), at most 8: enough to hold every core without starving the checker for an hour
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(min(usable, 8))]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _STARVED_CHECKER, json.dumps([[p, g] for p, g, _ in pairs])],
            cwd=ROOT, capture_output=True, text=True, timeout=900, preexec_fn=lambda: os.nice(10),
        )
    except subprocess.TimeoutExpired:
        b.add("starved", "MATH checker", "no verdicts within 900 s", ok=False)
        return
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    wall = time.monotonic() - start
    try:
        verdicts = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        b.add("starved", "MATH checker", f"no verdicts (exit {proc.returncode}): {proc.stderr.strip()[-200:]}", ok=False)
        return
    right = sum(v == want for v, (_, _, want) in zip(verdicts, pairs))
    b.add("starved", f"MATH verdicts right at nice 10 beside {len(hogs)} busy process(es)",
          f"{right}/{len(pairs)}", ok=right == len(pairs))
    b.add("starved", "wall time of the checks (worker start included)", f"{wall:.0f} s")


# -- main ----------------------------------------------------------------------------------------
SECTIONS: dict[str, Callable[[Battery], None]] = {
    "lm": lm_faults, "crash": crash_resume, "hostile": hostile, "secrets": secrets_section, "input": bad_input,
    "concurrency": concurrency, "starved": starved,
}


def run(fast: bool = False, only: list[str] | None = None, work: Path | None = None) -> list[Figure]:
    """Run the battery (or some sections) and return its figures (also printed, one per line)."""
    own = work is None
    work = work or Path(tempfile.mkdtemp(prefix="flowbot-battery-"))
    battery = Battery(fast=fast, work=work)
    saved = {k: os.environ.get(k) for k in ("FLOWBOT_HOME", "FLOWBOT_CACHE")}
    os.environ.setdefault("FLOWBOT_HOME", str(work / "home"))
    os.environ.setdefault("FLOWBOT_CACHE", "off")
    try:
        for name in only or list(SECTIONS):
            start = time.monotonic()
            SECTIONS[name](battery)
            print(f"    ({name}: {time.monotonic() - start:.0f} s)", flush=True)
    finally:
        for k, v in saved.items():  # leave the caller's environment as it was
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return battery.figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="the subset the default test suite runs")
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only this section (repeatable)")
    parser.add_argument("--check", action="store_true", help="exit 1 when an invariant figure is off")
    parser.add_argument("--hostile-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hostile_worker:
        hostile_worker(args.hostile_worker, args.fast)
        return 0
    for key in [k for k in os.environ if k.endswith("_API_KEY")]:
        del os.environ[key]  # the battery plants its own keys
    figures = run(fast=args.fast, only=args.only)
    failed = [f for f in figures if f.ok is False]
    print(f"battery: figures {len(figures)}, invariants off {len(failed)}")
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())

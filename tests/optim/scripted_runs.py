"""Tasks and their scripted models for whole runs, shared by the driver's, the budget's and the
resume tests. The optimizers answer the named prompts only, the task models the instructions of the
seeds and operators (anything else fails the run).

- ``mult``: the task model cannot multiply in its head (its chain of thought answers 42) and writes
  a correct program when a node asks for one;
- ``case``: the task model copies the question, in capitals once the optimizer's rewrite says so
  (``tool=True``: the rewrite also gives the step the calculator, which makes it cost two calls).

Run as a script, it is one optimization in a child process that a test may kill
(``FLOWBOT_CRASH_AT``), logging every paid request to a file as it is made."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from flowbot.lm import LMRequest
from flowbot.optim.operators import PROGRAM_INSTRUCTION
from flowbot.tasks import Task
from flowbot.tasks.seeds import COT_INSTRUCTION
from flowbot.testing import ScriptedLM, instructed, scripted_optimizer

POT = {"op": "program_of_thought", "target": "solve"}
#: the instruction the scripted optimizer's rewrite gives a node
REWRITE = "Multiply the numbers exactly. Think step by step."


def products(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        a, b = 1000 + 37 * i, 300 + 11 * i
        rows.append({"id": f"p{i}", "question": f"{a}*{b}", "answer": str(a * b)})
    return rows


def mult_task(n_val: int = 8) -> Task:
    return Task("mult", train=products(10), val=products(n_val, 100), test=products(6, 200), inputs=["question"],
                targets=["answer"], metric="numeric", description="multiply two integers", tools=["python"])


def question(req: LMRequest) -> str:
    return re.search(r"Question:\n(\S+)", req.messages[-1][1]).group(1)


def task_lm() -> ScriptedLM:
    """Wrong in its head (its chain of thought, as seeded or rewritten); writes a correct program
    when asked for one. Any other request fails."""
    return ScriptedLM([
        (instructed(PROGRAM_INSTRUCTION), lambda req, i: f"```python\nprint({question(req)})\n```"),
        (instructed(COT_INSTRUCTION), "Answer: 42"),
        (instructed(REWRITE), "Answer: 42"),
    ], model="task")


def offered(schema: dict, wanted: dict) -> dict:
    """``wanted`` when the schema offers it, else its first alternative (as a constrained decoder would)."""
    edit = schema["properties"]["edit"]
    alts = edit.get("anyOf", [edit])
    for alt in alts:
        if alt["properties"]["op"]["const"] == wanted["op"]:
            return wanted
    props = alts[0]["properties"]
    return {k: (v["const"] if "const" in v else v["enum"][0]) for k, v in props.items()}


def optimizer_lm(edit=POT, proposal_text=None, repair_text=None) -> ScriptedLM:
    """Answers the optimizer's named prompts; a proposal gets ``edit`` when the parent's schema
    offers it (else the first offered choice)."""
    def propose(req: LMRequest, i: int) -> str:
        if proposal_text is not None:
            return proposal_text
        choice = offered(req.json_schema, edit)
        return "Here: " + json.dumps({"critique": "It cannot multiply in its head; compute in code.", "edit": choice})

    return scripted_optimizer(
        edit=propose, aflow=propose,
        repair=repair_text if repair_text is not None else json.dumps({"critique": "fixed", "edit": edit}),
        loss="The product is wrong.", backward="GRADIENT: compute the product exactly.",
        aggregate="- compute exactly", rewrite=f"<instruction>{REWRITE}</instruction>")


UPPER = "Repeat the question in UPPERCASE letters."


def case_task(n_test: int = 30, tools: list[str] | None = None) -> Task:
    def rows(prefix: str, n: int) -> list[dict]:
        return [{"id": f"{prefix}{i}", "question": f"{prefix}word{i}", "answer": f"{prefix}word{i}".upper()}
                for i in range(n)]
    return Task("case", train=rows("t", 10), val=rows("v", 6), test=rows("x", n_test), inputs=["question"],
                targets=["answer"], description="copy the question in the right case", metric=same_case,
                tools=tools)


def same_case(example: dict, prediction: dict) -> float:
    return float(prediction.get("answer") == example["answer"])


def case_task_lm() -> ScriptedLM:
    """Copies the question; in capitals once its instruction is the optimizer's rewrite."""
    def copy(upper: bool):
        def reply(req: LMRequest, i: int) -> str:
            return "Answer: " + (question(req).upper() if upper else question(req))
        return reply
    return ScriptedLM([(instructed(UPPER), copy(True)), (instructed(COT_INSTRUCTION), copy(False))], model="task")


def case_optimizer(tool: bool = False) -> ScriptedLM:
    return scripted_optimizer(loss="The output is lowercase; the correct answer is uppercase.",
                              backward="GRADIENT: require UPPERCASE output.",
                              rewrite=f"<instruction>{UPPER}</instruction>" + ("<tools>calculator</tools>" * tool))


def prepare(tmp_path, task_provider, opt_provider, task=None, **kw):
    from flowbot.api import prepare_run

    options = dict(seed="cot", model="task", optimizer_model="optimizer", run_dir=Path(tmp_path) / "run",
                   providers={"task": task_provider, "optimizer": opt_provider}, train_size=10, val_size=8,
                   inner={"steps": 1, "demos": 0}, outer={"rounds": 2}, concurrency=1)
    options.update(kw)
    return prepare_run(task or mult_task(), **options)


def proposals(opt: ScriptedLM) -> list[LMRequest]:
    return [r for r in opt.calls if r.schema is not None]


def request_key(req: LMRequest) -> str:
    """One paid request, as the child run logs it and a test compares it."""
    return json.dumps([req.messages, req.seed, req.n, req.temperature])


class Logged(ScriptedLM):
    """A scripted model that appends each request it answers to a file at once (a killed process
    keeps the record of what it paid for)."""

    def __init__(self, inner: ScriptedLM, log: Path) -> None:
        super().__init__(inner.rules, model=inner.model)
        self.log = log

    async def complete(self, request: LMRequest):
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(request_key(request) + "\n")
        return await super().complete(request)


def main(spec_path: str) -> None:
    """Run one optimization from a JSON spec: ``dir`` (the run's parent), ``calls`` (the request
    log), ``task`` (``mult``, or ``case`` with the tool-giving rewrite), ``options`` (prepare_run's
    keywords), ``clock`` (a fake clock, ``{"start": s, "tick": t, "max_seconds": m}``: ``t`` seconds
    pass per event the run logs, for the run directory and a time budget of ``m`` s) and
    ``kill_in_cache_put`` (see :func:`_kill_in_cache_put`)."""
    import asyncio
    import time as real_time
    from types import SimpleNamespace

    from flowbot.lm import Budget
    from flowbot.optim import rundir

    spec = json.loads(Path(spec_path).read_text())
    options = dict(spec.get("options", {}))
    callbacks = []
    if spec.get("clock"):
        now = [float(spec["clock"]["start"])]
        rundir.time = SimpleNamespace(time=lambda: now[0], monotonic=real_time.monotonic, sleep=real_time.sleep)

        def tick(event: dict) -> None:
            now[0] += float(spec["clock"]["tick"])
        callbacks.append(tick)
        options["budget"] = Budget(max_seconds=spec["clock"]["max_seconds"], clock=lambda: now[0])
    if spec.get("kill_in_cache_put"):
        _kill_in_cache_put(int(spec["kill_in_cache_put"]))
    calls = Path(spec["calls"])
    if spec.get("task") == "case":
        task, models = case_task(n_test=6, tools=["calculator"]), (case_task_lm(), case_optimizer(tool=True))
    else:
        task, models = mult_task(), (task_lm(), optimizer_lm())
    prepared = prepare(spec["dir"], Logged(models[0], calls), Logged(models[1], calls), task=task, **options)
    asyncio.run(prepared.arun(callbacks))


def _kill_in_cache_put(n: int) -> None:
    """SIGKILL this process inside the ``n``-th write to the response cache: the response and 3 MB
    more written in an open transaction (more than SQLite's page cache holds, so pages of it reach
    the write-ahead log), never committed."""
    import os
    import signal

    from flowbot.lm.cache import ResponseCache

    original, count = ResponseCache.put, [0]

    def put(self, key, model, text, usage, origin=None):
        count[0] += 1
        if count[0] == n:
            with self._lock:
                row = "INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?)"
                self._conn.execute(row, (key, model, text, usage.prompt_tokens, usage.completion_tokens,
                                         usage.cost_usd, origin))
                for i in range(300):
                    self._conn.execute(row, (f"junk{i}", model, "x" * 10_000, 0, 0, None, origin))
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, key, model, text, usage, origin)

    ResponseCache.put = put


if __name__ == "__main__":
    main(sys.argv[1])

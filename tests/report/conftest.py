"""Real run directories made with scripted models (each run takes well under a second)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from flowbot.api import prepare_run
from flowbot.lm import LMRequest
from flowbot.tasks import Task
from flowbot.optim.operators import PROGRAM_INSTRUCTION
from flowbot.testing import ScriptedLM, instructed, scripted_optimizer

#: put into an instruction by the optimizer: the report must show it as text, never as markup
INJECTED = '<script>alert("x")</script><a href="https://evil.example/">click</a>'
POT_EDIT = '{"op": "program_of_thought", "target": "solve"}'
PRICE = (1e-6, 4e-6)  # dollars per prompt / completion token


def products(n: int, start: int) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        a, b = 1000 + 37 * i, 300 + 11 * i
        rows.append({"id": f"p{i}", "question": f"{a}*{b}", "answer": str(a * b)})
    return rows


def mult_task() -> Task:
    return Task("mult", train=products(10, 0), val=products(6, 100), test=products(6, 200), inputs=["question"],
                targets=["answer"], metric="numeric", description="multiply two integers", tools=["python"])


def task_lm(price: tuple[float, float] | None = None) -> ScriptedLM:
    """Writes a correct program when asked for one; told to multiply "exactly", gets the even first
    factors right in its head."""
    def program(req: LMRequest, i: int) -> str:
        q = re.findall(r"(\d+\*\d+)", req.messages[-1][1])[-1]
        return f"```python\nprint({q})\n```"

    def in_its_head(req: LMRequest, i: int) -> str:
        text = "\n".join(c for _, c in req.messages)
        q = re.findall(r"(\d+)\*(\d+)", req.messages[-1][1])
        if q and "exactly" in text:
            a, b = map(int, q[-1])
            if a % 2 == 0:
                return f"Answer: {a * b}"
        return "Answer: 42"
    return ScriptedLM([(instructed(PROGRAM_INSTRUCTION), program)], default=in_its_head, model="task",
                      price_per_token=price)


def optimizer_lm(price: tuple[float, float] | None = None, rewrite: str = f"Multiply exactly. {INJECTED}") -> ScriptedLM:
    return scripted_optimizer(
        repair='{"critique": "compute it in code", "edit": ' + POT_EDIT + "}",
        edit='It cannot multiply large numbers: {"critique": "it cannot multiply in its head", '
             '"edit": {"op": "program_of_thought", "target": "nowhere"}}',
        loss="The product is wrong.", backward="GRADIENT: compute the product exactly, digit by digit.",
        aggregate="- compute exactly", rewrite=f"<instruction>{rewrite}</instruction>", price_per_token=price)


def aflow_lms() -> tuple[ScriptedLM, ScriptedLM]:
    return task_lm(), scripted_optimizer(aflow='```json\n{"critique": "compute it", "edit": ' + POT_EDIT + '}\n```')


def make_run(path: Path, task: ScriptedLM, opt: ScriptedLM, callbacks=(), **kw) -> Path:
    options = dict(seed="cot", model="task", optimizer_model="optimizer", run_dir=path,
                   providers={"task": task, "optimizer": opt}, train_size=10, val_size=6,
                   inner={"steps": 1, "demos": 1, "minibatch_size": 10},
                   outer={"rounds": 1}, racing={"margin": 1, "alpha": 0.5})
    options.update(kw)
    with pytest.MonkeyPatch.context() as mp:  # session fixtures run outside the per-test isolation
        mp.setenv("FLOWBOT_HOME", str(path.parent / "flowbot_home"))
        for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "FLOWBOT_MODEL", "FLOWBOT_BASE_URL", "FLOWBOT_CACHE"):
            mp.delenv(key, raising=False)
        asyncio.run(prepare_run(mult_task(), **options).arun(callbacks))
    return path


@pytest.fixture(scope="session")
def full_run(tmp_path_factory) -> Path:
    """flowbot: an accepted prompt rewrite (with markup in it), a repaired program-of-thought edit; priced."""
    return make_run(tmp_path_factory.mktemp("full") / "run", task_lm(PRICE), optimizer_lm(PRICE))


@pytest.fixture(scope="session")
def stopped_run(tmp_path_factory) -> Path:
    """A budget used up once the seed is scored, so no child is proposed: a 60 s time budget, and
    the seed's validation took 61 s (a call budget too small for any child is refused before the
    run starts); prices unknown."""
    from flowbot.lm import Budget
    now = [0.0]

    def slow_seed(event):
        if event["type"] == "seed_evaluated":
            now[0] += 61.0

    return make_run(tmp_path_factory.mktemp("stopped") / "run", task_lm(), optimizer_lm(), callbacks=[slow_seed],
                    budget=Budget(max_seconds=60, clock=lambda: now[0]), budget_scope="search", outer={"rounds": 3})


@pytest.fixture(scope="session")
def aflow_run(tmp_path_factory) -> Path:
    task, opt = aflow_lms()
    return make_run(tmp_path_factory.mktemp("aflow") / "run", task, opt, method="aflow", aflow={"rounds": 1})

"""Real run directories made with scripted models (each run takes well under a second)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from flowbot.api import prepare_run
from flowbot.lm import LMRequest, ScriptedLM
from flowbot.tasks import Task

#: put into an instruction by the optimizer: the report must show it as text, never as markup
INJECTED = '<script>alert("x")</script><a href="https://evil.example/">click</a>'
CALCULATOR_EDIT = ('{"op": "add_tool_step", "tool": "calculator", "consumer": "solve", '
                   '"args": {"expression": "question"}}')
PRICE = (1e-6, 4e-6)  # dollars per prompt / completion token


def products(n: int, start: int) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        a, b = 1000 + 37 * i, 300 + 11 * i
        rows.append({"id": f"p{i}", "question": f"{a}*{b}", "answer": str(a * b)})
    return rows


def mult_task() -> Task:
    return Task("mult", train=products(10, 0), val=products(6, 100), test=products(6, 200), inputs=["question"],
                targets=["answer"], metric="numeric", description="multiply two integers")


def task_lm(price: tuple[float, float] | None = None) -> ScriptedLM:
    """Copies a calculator result; told to multiply "exactly", gets the even first factors right."""
    def reply(req: LMRequest, i: int) -> str:
        text = "\n".join(c for _, c in req.messages)
        results = re.findall(r"Calculator result:\n(\S+)", req.messages[-1][1])
        if results:  # the last one: demos come first
            return f"Answer: {results[-1]}"
        q = re.findall(r"(\d+)\*(\d+)", req.messages[-1][1])
        if q and "exactly" in text:
            a, b = map(int, q[-1])
            if a % 2 == 0:
                return f"Answer: {a * b}"
        return "Answer: 42"
    return ScriptedLM(default=reply, model="task", price_per_token=price)


def optimizer_lm(price: tuple[float, float] | None = None, rewrite: str = f"Multiply exactly. {INJECTED}") -> ScriptedLM:
    return ScriptedLM([
        (r"could not be applied", f"Fixed.\n```json\n{CALCULATOR_EDIT}\n```"),
        (r"propose ONE structural edit|Edit vocabulary",
         "It cannot multiply large numbers; give it a calculator.\n```json\n"
         '{"op": "add_tool_step", "tool": "calculator", "consumer": "nowhere", "args": {"expression": "question"}}'
         "\n```"),
        (r"What is wrong with the output\?", "The product is wrong."),
        (r"Reply with exactly these lines", "GRADIENT: compute the product exactly, digit by digit."),
        (r"merge feedback", "- compute exactly"),
        (r"<instruction>", f"<instruction>{rewrite}</instruction>"),
    ], model="optimizer", price_per_token=price)


def aflow_lms() -> tuple[ScriptedLM, ScriptedLM]:
    opt = ScriptedLM([(r"operator", '```json\n{"operator": "programmer", "target": "solve"}\n```')],
                     model="optimizer")

    def task(req: LMRequest, i: int) -> str:
        user = req.messages[-1][1]
        if "Python program" in req.messages[0][1]:
            q = re.search(r"Question:\n(\S+)", user).group(1)
            return f"```python\nprint({q})\n```"
        m = re.search(r"Python result:\n(\S+)", user)
        return f"Answer: {m.group(1)}" if m else "Answer: 42"

    return ScriptedLM(default=task, model="task"), opt


def make_run(path: Path, task: ScriptedLM, opt: ScriptedLM, **kw) -> Path:
    options = dict(seed="cot", model="task", optimizer_model="optimizer", run_dir=path,
                   providers={"task": task, "optimizer": opt}, train_size=10, val_size=6,
                   # ties keep their demos whatever they cost, so the report has a demo change to show
                   inner={"steps": 1, "demos": 1, "minibatch_size": 10, "tie_cost_increase": None},
                   outer={"rounds": 1, "patience": 1})
    options.update(kw)
    with pytest.MonkeyPatch.context() as mp:  # session fixtures run outside the per-test isolation
        mp.setenv("FLOWBOT_HOME", str(path.parent / "flowbot_home"))
        for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "FLOWBOT_MODEL", "FLOWBOT_BASE_URL", "FLOWBOT_CACHE"):
            mp.delenv(key, raising=False)
        asyncio.run(prepare_run(mult_task(), **options).arun())
    return path


@pytest.fixture(scope="session")
def full_run(tmp_path_factory) -> Path:
    """flowbot: an accepted prompt rewrite (with markup in it), a repaired calculator edit, demos; priced."""
    return make_run(tmp_path_factory.mktemp("full") / "run", task_lm(PRICE), optimizer_lm(PRICE))


@pytest.fixture(scope="session")
def stopped_run(tmp_path_factory) -> Path:
    """A budget so small that only the seed is scored; prices unknown."""
    return make_run(tmp_path_factory.mktemp("stopped") / "run", task_lm(), optimizer_lm(), budget={"calls": 25})


@pytest.fixture(scope="session")
def aflow_run(tmp_path_factory) -> Path:
    task, opt = aflow_lms()
    return make_run(tmp_path_factory.mktemp("aflow") / "run", task, opt, method="aflow", aflow={"rounds": 1})

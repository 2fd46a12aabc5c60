"""A task that needs two fixes, and its scripted models, for tests of budgets that run out: an
answer in capitals scores 0.5, in capitals with "!" 1.0. The optimizer's first rewrite of the seed's
instruction is CAPS, its rewrite of CAPS is SHOUT. :class:`Clocked` moves a fake clock past a time
budget after a chosen request, so the next paid call is refused."""

from __future__ import annotations

import json
import re

from flowbot.lm import LMRequest
from flowbot.lm.base import Provider
from flowbot.tasks import Task
from flowbot.tasks.seeds import COT_INSTRUCTION
from flowbot.testing import ScriptedLM, instructed, scripted_optimizer

from .scripted_runs import offered

CAPS = "Repeat the question in capitals."
SHOUT = "Repeat the question in capitals and end with an exclamation mark."
LIMIT = 100.0


def rows(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "question": f"{prefix}word{i}", "answer": f"{prefix}word{i}".upper() + "!"}
            for i in range(n)]


def shouted(example: dict, prediction: dict) -> float:
    answer, gold = str(prediction.get("answer") or ""), example["answer"]
    return 0.5 * (answer.rstrip("!") == gold.rstrip("!")) + 0.5 * (answer == gold)


def shout_task() -> Task:
    return Task("shout", train=rows("t", 10), val=rows("v", 6), test=rows("x", 4), inputs=["question"],
                targets=["answer"], metric=shouted, description="repeat the question, shouting")


def task_lm() -> ScriptedLM:
    """Copies the question as its instruction says; with a tool, calls it once first."""
    def answer(transform):
        def reply(req: LMRequest, i: int) -> str:
            if "Tools:" in req.messages[0][1] and not req.messages[-1][1].startswith("Observation:"):
                return "Let me check.\nAction: calculator[1+1]"
            q = re.search(r"Question:\n(\S+)", [c for r, c in req.messages if r == "user"][0]).group(1)
            return "Answer: " + transform(q)
        return reply
    return ScriptedLM([(instructed(SHOUT), answer(lambda q: q.upper() + "!")),
                       (instructed(CAPS), answer(str.upper)),
                       (instructed(COT_INSTRUCTION), answer(lambda q: q))], model="task")


def optimizer_lm() -> ScriptedLM:
    def rewrite(req: LMRequest, i: int) -> str:  # CAPS for the seed's instruction, then SHOUT
        return f"<instruction>{SHOUT if CAPS in req.messages[-1][1] else CAPS}</instruction>"

    def vote(req: LMRequest, i: int) -> str:
        return json.dumps({"critique": "one sample is noisy", "edit": offered(
            req.json_schema, {"op": "self_consistency", "target": "solve", "k": 3})})

    return scripted_optimizer(loss="Not shouted.", backward="GRADIENT: shout the answer.", rewrite=rewrite,
                              edit=vote)


class Clocked(Provider):
    """Passes requests to ``inner``; after answering the one ``when`` picks, moves the clock past
    the time budget."""

    def __init__(self, inner: ScriptedLM, when, now: list[float], seen: list) -> None:
        self.inner, self.when, self.now, self.seen = inner, when, now, seen
        self.model, self.max_concurrency = inner.model, inner.max_concurrency

    @property
    def calls(self) -> list[LMRequest]:
        return self.inner.calls

    def price_per_token(self):
        return None

    async def complete(self, request: LMRequest):
        result = await self.inner.complete(request)
        self.seen.append(request)
        if self.when(request, self.seen):
            self.now[0] += 10 * LIMIT
        return result


def nth(n: int, matcher):
    """The ``n``-th request ``matcher`` accepts."""
    return lambda request, seen: matcher(request) and sum(map(matcher, seen)) == n

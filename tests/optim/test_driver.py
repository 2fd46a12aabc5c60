"""The bilevel driver with scripted models: a structural change that is clearly right (a calculator
tool), repair of an invalid proposal, resume without repaying, budgets, the AFlow-style baseline."""

import json
import re

import pytest

from flowbot.api import prepare_run
from flowbot.graph import apply_edit
from flowbot.lm import LMClient, LMRequest, ScriptedLM
from flowbot.optim.aflow import AFlowSearch, operator_edit
from flowbot.optim.archive import Archive, ArchiveEntry
from flowbot.optim.outer import OuterLoop
from flowbot.tasks import Task
from flowbot.tasks.baselines import task_baseline


def products(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        a, b = 1000 + 37 * i, 300 + 11 * i
        rows.append({"id": f"p{i}", "question": f"{a}*{b}", "answer": str(a * b)})
    return rows


def mult_task() -> Task:
    return Task("mult", train=products(10), val=products(6, 100), test=products(6, 200), inputs=["question"],
                targets=["answer"], metric="numeric", description="multiply two integers")


def task_lm() -> ScriptedLM:
    """Wrong on its own; copies a calculator result when its input has one."""
    def reply(req: LMRequest, i: int) -> str:
        user = req.messages[-1][1]
        m = re.search(r"Calculator result:\n(\S+)", user)
        if m:
            return f"Answer: {m.group(1)}"
        return "Answer: 42"
    return ScriptedLM(default=reply, model="task")


GOOD_EDIT = '{"op": "add_tool_step", "tool": "calculator", "consumer": "solve", "args": {"expression": "question"}}'


def optimizer_lm(first_edit: str = GOOD_EDIT) -> ScriptedLM:
    return ScriptedLM([
        (r"could not be applied", f"Fixed.\n```json\n{GOOD_EDIT}\n```"),
        (r"propose ONE structural edit|Edit vocabulary", f"The model cannot multiply; give it a calculator.\n```json\n{first_edit}\n```"),
        (r"What is wrong with the output\?", "The product is wrong."),
        (r"Reply with exactly these lines", "GRADIENT: compute the product exactly."),
        (r"merge feedback", "- compute exactly"),
        (r"<instruction>", "<instruction>Multiply the numbers exactly. Think step by step.</instruction>"),
    ], model="optimizer")


def prepare(tmp_path, task_provider, opt_provider, **kw):
    options = dict(seed="cot", model="task", optimizer_model="optimizer", run_dir=tmp_path / "run",
                   providers={"task": task_provider, "optimizer": opt_provider}, train_size=10, val_size=6,
                   inner={"steps": 1, "demos": 0}, outer={"rounds": 2, "patience": 2})
    options.update(kw)
    return prepare_run(mult_task(), **options)


async def test_outer_loop_adds_the_tool_and_keeps_it(tmp_path):
    events = []
    result = await prepare(tmp_path, task_lm(), optimizer_lm()).arun([events.append])
    assert result.seed_val_score == 0.0
    assert result.val_score == 1.0 and result.test_score == 1.0
    tools = [n for n in result.best.sketch.nodes if n.kind == "tool"]
    assert [t.tool for t in tools] == ["calculator"]
    types = [e["type"] for e in events]
    assert "candidate_proposed" in types and "candidate_accepted" in types
    run = tmp_path / "run"
    assert json.loads((run / "best.json").read_text())["sketch"]["nodes"][-1]["kind"] == "tool"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["score"] == 1.0 and summary["seed_test"]["score"] == 0.0
    assert summary["test_gain_vs_seed"]["mean"] == 1.0
    assert set(summary["usage_by_role"]) == {"task", "optimizer"}
    assert summary["usage_by_role"]["optimizer"]["calls"] > 0
    logged = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in logged] == list(range(1, len(logged) + 1))


async def test_invalid_proposal_is_repaired(tmp_path):
    bad = '{"op": "add_tool_step", "tool": "calculator", "consumer": "no_such_node", "args": {"expression": "question"}}'
    events = []
    result = await prepare(tmp_path, task_lm(), optimizer_lm(bad)).arun([events.append])
    assert any(e["type"] == "edit_repaired" for e in events)
    assert result.val_score == 1.0


async def test_unrepairable_proposal_is_dropped(tmp_path):
    opt = optimizer_lm('{"op": "teleport"}')
    opt.rules = [r for r in opt.rules if "could not" not in str(r)]  # repair answers garbage too
    opt.rules.insert(0, (opt._compile(r"could not be applied"), "still not json"))
    events = []
    result = await prepare(tmp_path, task_lm(), opt).arun([events.append])
    rejected = [e for e in events if e["type"] == "candidate_rejected"]
    assert rejected and all(e["reason"] == "invalid" for e in rejected)
    assert result.best_id == "c0" and result.best.sketch.node_ids() == ["solve"]


async def test_resume_after_stop_repays_nothing_and_matches_a_full_run(tmp_path):
    # reference: one uninterrupted run
    ref_task, ref_opt = task_lm(), optimizer_lm()
    ref = await prepare(tmp_path / "ref", ref_task, ref_opt).arun()
    ref_calls = len(ref_task.calls) + len(ref_opt.calls)

    # the same run, stopped by a STOP file after the first candidate is evaluated ...
    run_dir = tmp_path / "resumed" / "run"
    t1, o1 = task_lm(), optimizer_lm()

    def stop_after_candidate(event):
        if event["type"] == "candidate_evaluated":
            (run_dir / "STOP").write_text("")

    first = await prepare(tmp_path / "resumed", t1, o1).arun([stop_after_candidate])
    assert first.stopped and "stop file" in first.stopped
    paid_first = {(r.messages, r.seed, r.n) for r in t1.calls + o1.calls}

    # ... then resumed with fresh providers: nothing paid before is paid again
    t2, o2 = task_lm(), optimizer_lm()
    events = []
    second = await prepare(tmp_path / "resumed", t2, o2).arun([events.append])
    paid_second = {(r.messages, r.seed, r.n) for r in t2.calls + o2.calls}
    assert not (paid_first & paid_second)
    assert any(e["replayed"] for e in events)
    assert second.resumed and second.val_score == ref.val_score == 1.0
    assert second.best.sketch.signature() == ref.best.sketch.signature()
    assert len(t1.calls) + len(o1.calls) + len(t2.calls) + len(o2.calls) == ref_calls
    # the run's totals cover both sessions, as if it had not been interrupted
    assert second.usage["task"]["calls"] == ref.usage["task"]["calls"]


async def test_budget_exhaustion_returns_a_valid_best(tmp_path):
    t, o = task_lm(), optimizer_lm()
    result = await prepare(tmp_path, t, o, budget={"calls": 25}).arun()
    assert result.stopped
    result.best.check()
    assert len(t.calls) + len(o.calls) <= 25
    assert (tmp_path / "run" / "best.json").exists()


async def test_changed_settings_refuse_to_reuse_a_run_dir(tmp_path):
    await prepare(tmp_path, task_lm(), optimizer_lm(), outer={"rounds": 0}).arun()
    with pytest.raises(ValueError, match="other settings"):
        await prepare(tmp_path, task_lm(), optimizer_lm(), val_size=3).arun()


def python_task_lm() -> ScriptedLM:
    """Writes a correct program when asked for one; answers right only from its result."""
    def task(req: LMRequest, i: int) -> str:
        user = req.messages[-1][1]
        if "Python program" in req.messages[0][1]:
            q = re.search(r"Question:\n(\S+)", user).group(1)
            return f"```python\nprint({q})\n```"
        m = re.search(r"Python result:\n(\S+)", user)
        return f"Answer: {m.group(1)}" if m else "Answer: 42"
    return ScriptedLM(default=task)


async def test_aflow_baseline_on_the_same_ir(tmp_path):
    opt = ScriptedLM([(r"operator", '```json\n{"operator": "programmer", "target": "solve"}\n```')], model="optimizer")
    events = []
    result = await prepare(tmp_path, python_task_lm(), opt, method="aflow", aflow={"rounds": 1}).arun([events.append])
    assert result.val_score == 1.0
    assert any(n.kind == "tool" and n.tool == "python" for n in result.best.sketch.nodes)
    assert not any(e["type"] == "inner_candidate" for e in events)  # structure only


def test_dry_run_estimate(tmp_path):
    est = prepare(tmp_path, task_lm(), optimizer_lm(), budget={"calls": 5}).estimate()
    d = est.to_dict()
    assert d["total"]["task_calls"] > 0 and d["total"]["optimizer_calls"] > 0
    assert est.warnings and "too small" in est.warnings[0]
    assert not (tmp_path / "run").exists()  # an estimate pays nothing and writes nothing



VERIFIER_EDIT = '{"op": "insert_verifier", "target": "solve"}'


def archive_with_verifier_tried():
    """c0 = the CoT seed, c1 = c0 plus a verifier (already evaluated)."""
    seed = task_baseline(mult_task(), "cot")
    archive = Archive()
    archive.add(ArchiveEntry(id="c0", workflow=seed, val_score=0.0, cost_per_example=0.0, tokens_per_example=10))
    archive.add(ArchiveEntry(id="c1", workflow=apply_edit(seed, json.loads(VERIFIER_EDIT)), val_score=0.0,
                             cost_per_example=0.0, tokens_per_example=20))
    return archive


def greedy_repeats_then_sampling_differs(greedy: str, sampled: str):
    """Like a small local model at temperature 0 (and its cache), the optimizer proposes the same
    edit again and again; only a sampled retry (temperature > 0) says something else."""
    temperatures = []

    def reply(req: LMRequest, i: int) -> str:
        temperatures.append(req.temperature)
        return f"```json\n{sampled if req.temperature > 0 else greedy}\n```"
    return ScriptedLM(default=reply, model="optimizer"), temperatures


async def test_outer_loop_retries_a_duplicate_proposal_by_sampling():
    archive = archive_with_verifier_tried()
    opt, temperatures = greedy_repeats_then_sampling_differs(VERIFIER_EDIT, GOOD_EDIT)
    events = []
    loop = OuterLoop(tune=None, optimizer=LMClient(opt), task_description="multiply",
                     tools={"calculator": ["expression"]}, on_event=events.append)
    edit, child = await loop._propose(archive, archive.get("c0"))
    assert edit.op == "add_tool_step" and archive.seen(child) is None
    assert temperatures[0] == 0.0 and temperatures[1] > 0
    assert [e["reason"] for e in events if e["type"] == "candidate_rejected"] == ["duplicate"]
    # the duplicate is shown to the optimizer with the score its twin got
    assert archive.get("c0").tried[0] == ("insert_verifier(target=solve) (same as c1)", 0.0)


async def test_aflow_retries_a_duplicate_modification_by_sampling():
    archive = archive_with_verifier_tried()
    archive.get("c1").workflow = apply_edit(archive.get("c0").workflow, operator_edit(
        archive.get("c0").workflow, {"operator": "review_revise", "target": "solve"}))
    archive.signatures = {e.workflow.sketch.signature(): e.id for e in archive.entries}
    opt, temperatures = greedy_repeats_then_sampling_differs(
        '{"operator": "review_revise", "target": "solve"}', '{"operator": "programmer", "target": "solve"}')
    search = AFlowSearch(evaluator=None, optimizer=LMClient(opt), task_description="multiply",
                         tools={"python": ["code"]})
    edit, child = await search._expand(archive, archive.get("c0"))
    assert edit.op == "add_tool_step" and edit.tool == "python"
    assert temperatures[0] == 0.0 and temperatures[1] > 0


def test_resume_ignores_settings_the_method_does_not_use(tmp_path):
    # an inner-only run keeps no outer-loop settings, so a new outer default cannot block its resume
    from flowbot.optim.rundir import RunDir, changed_settings
    first = prepare(tmp_path, task_lm(), optimizer_lm(), method="inner-only", concurrency=2)
    assert "outer" not in first.settings["optimize"] and "aflow" not in first.settings["optimize"]
    RunDir(first.run_dir).start(first.settings)
    again = prepare(tmp_path, task_lm(), optimizer_lm(), method="inner-only", concurrency=8,
                    outer={"rounds": 9})
    assert RunDir(again.run_dir).start(again.settings)[1]  # resumed: concurrency may change
    changed = prepare(tmp_path, task_lm(), optimizer_lm(), method="inner-only", inner={"steps": 2, "demos": 0})
    with pytest.raises(ValueError, match=r"optimize\.inner\.steps"):
        RunDir(changed.run_dir).start(changed.settings)
    # a setting only the saved run has is not a change; a new one is
    assert changed_settings({"a": {"x": 1, "old": 2}}, {"a": {"x": 1}}, set()) == []
    assert changed_settings({"a": {"x": 1}}, {"a": {"x": 1, "new": 3}}, set()) == ["a.new"]


async def test_a_candidate_over_its_budget_share_is_dropped_and_the_search_goes_on(tmp_path):
    events = []
    result = await prepare(tmp_path, task_lm(), optimizer_lm(), budget={"calls": 200},
                           outer={"rounds": 2, "patience": 3, "candidate_share": 0.005}).arun([events.append])
    dropped = [e for e in events if e["type"] == "candidate_rejected" and "budget share" in e.get("reason", "")]
    assert len(dropped) == 2  # both rounds ran; neither candidate stopped the run
    assert result.stopped is None and result.best_id == "c0" and result.test_score is not None

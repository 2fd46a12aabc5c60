"""The bilevel driver with scripted models: a structural change that is clearly right (program of
thought on a task the model cannot do in its head), proposals decoded under the parent's schema
(repaired once, else dropped), racing, budgets priced in evaluations, resume without repaying, the
AFlow-style baseline and the fixed-order ablation on the same skeleton."""

import json

import pytest

from flowbot.lm.cache import ResponseCache
from flowbot.testing import optimizer_prompt, repair_turn

from .scripted_runs import (case_optimizer, case_task, case_task_lm, mult_task, optimizer_lm, prepare, proposals,
                            task_lm)


async def test_outer_loop_finds_program_of_thought_and_keeps_it(tmp_path):
    events = []
    opt = optimizer_lm()
    result = await prepare(tmp_path, task_lm(), opt).arun([events.append])
    assert result.seed_val_score == 0.0 and result.val_score == 1.0 and result.test_score == 1.0
    assert [n.tool for n in result.best.sketch.nodes if n.kind == "tool"] == ["python"]
    # the proposal was decoded under a schema built from the parent: only its node, only allowed operators
    schema = json.loads(proposals(opt)[0].schema)
    assert list(schema["properties"]) == ["critique", "edit"]
    ops = {alt["properties"]["op"]["const"] for alt in schema["properties"]["edit"]["anyOf"]}
    assert "program_of_thought" in ops and "extract_then_answer" not in ops  # no context field in this task
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["proposals"]["invalid"] == 0 and summary["proposals"]["applied"] >= 1
    assert summary["racing"]["raced"] >= 1 and summary["racing"]["accepted"] >= 1
    gain = summary["test_gain_vs_seed"]
    assert (gain["mean"], gain["wins"], gain["losses"]) == (1.0, 6, 0) and gain["method"].startswith("exact")
    assert any(e["type"] == "proposal" and e["status"] == "valid" and "compute in code" in e["critique"]
               for e in events)
    logged = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in logged] == list(range(1, len(logged) + 1))
    assert json.loads((run / "best.json").read_text())["sketch"]["nodes"][0]["id"] == "write_program"


async def test_an_unusable_proposal_is_repaired_once(tmp_path):
    opt = optimizer_lm(proposal_text='{"critique": "x", "edit": {"op": "teleport", "target": "solve"}}')
    result = await prepare(tmp_path, task_lm(), opt, outer={"rounds": 1}).arun()
    summary = result.summary
    assert summary["proposals"]["valid"] >= 1 and summary["proposals"]["invalid"] == 0
    assert result.val_score == 1.0
    assert any(repair_turn("edit")(r) for r in opt.calls)


async def test_an_unrepairable_proposal_is_dropped_and_counted(tmp_path):
    opt = optimizer_lm(proposal_text="no json here", repair_text="still none")
    result = await prepare(tmp_path, task_lm(), opt, outer={"rounds": 1, "proposal_attempts": 2}).arun()
    # each try is 2 replies; a fruitless try does not use up a round, so the search tries the (only)
    # parent three times before it gives up
    assert result.summary["proposals"] == {"made": 6, "valid": 0, "invalid": 6, "duplicate": 0, "applied": 0, "repaired": 0}
    assert result.best_id == "c0" and result.best.sketch.node_ids() == ["solve"]
    assert result.stopped == "no new candidate the budget can pay for"


async def test_fixed_order_ablation_makes_no_proposal_call(tmp_path):
    opt = optimizer_lm()
    result = await prepare(tmp_path, task_lm(), opt, outer={"rounds": 1, "proposal": "fixed"}).arun()
    assert not proposals(opt)
    assert result.val_score == 1.0 and result.summary["proposals"]["made"] == 1  # program_of_thought comes first


async def test_aflow_baseline_runs_the_same_skeleton_without_tuning(tmp_path):
    opt = optimizer_lm()
    events = []
    result = await prepare(tmp_path, task_lm(), opt, method="aflow", aflow={"rounds": 1}).arun([events.append])
    assert result.val_score == 1.0
    assert any(n.kind == "tool" and n.tool == "python" for n in result.best.sketch.nodes)
    assert not any(e["type"] in ("inner_candidate", "inner_step") for e in events)  # structure only
    assert optimizer_prompt("aflow")(proposals(opt)[0])
    assert result.summary["racing"]["raced"] == 1


async def test_resume_after_stop_repays_nothing_and_matches_a_full_run(tmp_path):
    ref_task, ref_opt = task_lm(), optimizer_lm()
    ref = await prepare(tmp_path / "ref", ref_task, ref_opt).arun()
    ref_calls = len(ref_task.calls) + len(ref_opt.calls)

    run_dir = tmp_path / "resumed" / "run"
    t1, o1 = task_lm(), optimizer_lm()

    def stop_after_proposal(event):
        if event["type"] == "proposal":
            (run_dir / "STOP").write_text("")

    first = await prepare(tmp_path / "resumed", t1, o1).arun([stop_after_proposal])
    assert first.stopped and "stop file" in first.stopped
    paid_first = {(r.messages, r.seed, r.n) for r in t1.calls + o1.calls}

    t2, o2 = task_lm(), optimizer_lm()
    events = []
    second = await prepare(tmp_path / "resumed", t2, o2).arun([events.append])
    paid_second = {(r.messages, r.seed, r.n) for r in t2.calls + o2.calls}
    assert not (paid_first & paid_second)
    assert any(e["replayed"] for e in events)
    assert second.resumed and second.val_score == ref.val_score == 1.0
    assert second.best.sketch.signature() == ref.best.sketch.signature()
    assert len(t1.calls) + len(o1.calls) + len(t2.calls) + len(o2.calls) == ref_calls
    assert second.usage["task"]["calls"] == ref.usage["task"]["calls"]
    assert second.summary["racing"] == ref.summary["racing"]


async def test_a_stop_file_ends_the_run_before_its_test_even_when_the_test_is_outside_the_budget(tmp_path):
    run_dir = tmp_path / "run"

    def stop_after_proposal(event):
        if event["type"] == "proposal":
            (run_dir / "STOP").write_text("")

    t, o = task_lm(), optimizer_lm()
    events = []
    result = await prepare(tmp_path, t, o, budget={"calls": 500}, budget_scope="search").arun(
        [stop_after_proposal, events.append])
    assert result.stopped and "stop file" in result.stopped
    assert not any(e["type"] == "test_evaluated" for e in events) and result.test_score is None
    assert not any("testing" in str(e) for e in events)


async def test_a_resumed_run_counts_the_time_its_earlier_session_spent(tmp_path, monkeypatch):
    """A 60 s time budget stops the first session after 61 s; the resumed session starts with that
    time spent (sessions.json), so it stops at once and pays nothing, instead of a fresh 60 s."""
    from types import SimpleNamespace

    import flowbot.optim.rundir as rundir
    from flowbot.lm import Budget
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731 -- one fake clock for the budget and the run directory
    import time as real_time
    # the run directory's wall clock is fake; its lock's waits (monotonic, sleep) stay real
    monkeypatch.setattr(rundir, "time", SimpleNamespace(time=clock, monotonic=real_time.monotonic,
                                                        sleep=real_time.sleep))

    def slow_seed(event):  # the seed's validation took 61 s
        if event["type"] == "seed_evaluated" and not event["replayed"]:
            now[0] += 61.0

    t1, o1 = task_lm(), optimizer_lm()
    first = await prepare(tmp_path, t1, o1, budget=Budget(max_seconds=60, clock=clock)).arun([slow_seed])
    assert first.stopped and "time budget of 60 s is used up" in first.stopped
    assert len(t1.calls) == 8 and not o1.calls  # the seed's validation, then nothing
    t2, o2 = task_lm(), optimizer_lm()
    second = await prepare(tmp_path, t2, o2, budget=Budget(max_seconds=60, clock=clock)).arun()
    assert second.resumed and "time budget of 60 s is used up" in second.stopped
    assert not t2.calls and not o2.calls
    assert second.summary["budget"]["spent"]["seconds"] >= 61.0


async def test_a_small_budget_is_refused_and_the_least_it_names_is_kept_within(tmp_path):
    # 8 calls score the seed; the child cheapest to race (program of thought: the cache answers its
    # chain of thought, the seed's own node) pays 1 call on each of the 8 items after a 2-call
    # proposal (10 calls): 17 calls cannot pay for one, and the refusal names the least that can
    t, o = task_lm(), optimizer_lm()
    with pytest.raises(ValueError, match="cannot pay for one structural candidate.*--budget-calls to at least 18"):
        await prepare(tmp_path, t, o, budget={"calls": 17}, budget_scope="search", outer={"rounds": 3}).arun()
    assert not t.calls and not o.calls and not (tmp_path / "run").exists()
    result = await prepare(tmp_path, t, o, budget={"calls": 18}, budget_scope="search", outer={"rounds": 3}).arun()
    assert proposals(o) and result.summary["budget"]["spent"]["calls"] <= 18
    # the one child it could pay for won, and is the result; then the budget stopped the search
    assert result.stopped == "the budget left cannot pay for another candidate's raced validation"
    assert result.best_id == "c1" and result.val_score == 1.0 and result.seed_val_score == 0.0
    assert result.best.sketch.node_ids()[0] == "write_program" and result.test_score == 1.0
    saved = json.loads((tmp_path / "run" / "best.json").read_text())
    assert saved["sketch"] == json.loads(result.best.sketch.model_dump_json())
    assert saved["meta"]["tuned"]["candidate"] == "c1"


async def test_a_budget_that_affords_one_child_keeps_what_it_won(tmp_path):
    t, o = task_lm(), optimizer_lm()
    result = await prepare(tmp_path, t, o, budget={"calls": 45}, budget_scope="search", outer={"rounds": 3},
                           inner={"steps": 0, "demos": 0}).arun()
    assert result.best.sketch.node_ids()[0] == "write_program" and result.val_score == 1.0
    assert result.summary["budget"]["spent"]["calls"] <= 45


async def test_search_scope_keeps_the_test_outside_the_cap(tmp_path):
    t, o = task_lm(), optimizer_lm()
    result = await prepare(tmp_path, t, o, budget={"calls": 60}, budget_scope="search",
                           outer={"rounds": 1}).arun()
    assert result.test is not None and len(result.test.results) == 6 and result.seed_test is not None
    assert result.summary["budget"]["scope"] == "search"
    assert result.summary["usage_by_phase"]["seed"]["calls"] + result.summary["usage_by_phase"]["search"]["calls"] <= 60


async def test_the_test_reserve_counts_only_uncached_seed_items(tmp_path):
    """With the seed's test answers already cached (another run or an eval paid for them), the
    reserve holds nothing for the seed, so the search may spend that budget."""
    import flowbot
    run = tmp_path / "run"
    run.mkdir()
    cache = ResponseCache(run / "cache.sqlite")
    await flowbot.aevaluate("cot", mult_task(), split="test", cache=cache, providers={"task": task_lm()}, model="task")
    cache.close()
    events = []
    await prepare(tmp_path, task_lm(), optimizer_lm(), budget={"calls": 200}, outer={"rounds": 0}).arun([events.append])
    plan = next(e for e in events if e["type"] == "budget_plan")
    assert plan["reserved_for_test"].startswith("0 calls") and "0 of 6 seed test items uncached" in plan["reserved_for_test"]


async def test_a_tuned_seed_keeps_its_test_evaluation_paid_for(tmp_path):
    """The seed's test answers are cached, so nothing is reserved for them; the inner loop's rewrite
    wins, and the tuned workflow's 30 test items must then be paid from the 65 calls. The inner loop
    reserves them as soon as it wins, so it takes no step it could not pay for beside them."""
    import flowbot
    run = tmp_path / "run"
    run.mkdir()
    cache = ResponseCache(run / "cache.sqlite")
    await flowbot.aevaluate("cot", case_task(), split="test", cache=cache, providers={"task": case_task_lm()},
                            model="task")
    cache.close()
    events = []
    result = await prepare(tmp_path, case_task_lm(), case_optimizer(), task=case_task(), method="inner-only",
                           budget={"calls": 65}, inner={"steps": 3, "demos": 0}).arun([events.append])
    assert result.val_score == 1.0 and "UPPERCASE" in result.best.params["solve"].instruction
    assert len(result.test.results) == 30 and result.test_score == 1.0
    assert not any(e["type"] == "budget_warning" and "test evaluation incomplete" in e["message"] for e in events)
    assert result.summary["budget"]["spent"]["calls"] <= 65


def test_a_budget_too_small_for_one_candidate_is_refused_before_paying(tmp_path):
    import asyncio
    t, o = task_lm(), optimizer_lm()
    prepared = prepare(tmp_path, t, o, budget={"calls": 20})
    est = prepared.estimate()
    phases = est.to_dict()["phases"]
    # the seed's 8 validation items and the 6 test items of the best and of the seed, one call each
    assert phases["seed evaluation"]["task_calls"] == 8 and phases["test evaluation"]["task_calls"] == 12
    assert est.to_dict()["total"]["task_calls"] == sum(p["task_calls"] for p in phases.values())
    assert est.refusal and "cannot pay for one structural candidate" in est.refusal and est.candidates == 0
    assert "--budget-calls to at least 36" in est.refusal
    with pytest.raises(ValueError, match="cannot pay for one"):
        asyncio.run(prepared.arun())
    assert not t.calls and not o.calls and not (tmp_path / "run").exists()
    # the least budget the refusal names is the least that runs, and it races a child and keeps it
    assert prepare(tmp_path, t, o, budget={"calls": 35}).estimate().candidates == 0
    least = prepare(tmp_path, t, o, budget={"calls": 36})
    assert least.estimate().refusal is None and least.estimate().candidates == 1
    result = asyncio.run(least.arun())
    assert result.summary["racing"]["raced"] >= 1 and result.summary["budget"]["spent"]["calls"] <= 36
    assert result.best_id == "c1" and result.val_score == 1.0 and len(result.test.results) == 6
    roomy = prepare(tmp_path / "roomy", t, o, budget={"calls": 400}).estimate()
    assert roomy.refusal is None and roomy.candidates > 1


def test_a_tokens_or_dollars_budget_too_small_for_one_candidate_is_refused_before_paying(tmp_path):
    import asyncio
    t, o = task_lm(), optimizer_lm()
    tokens = prepare(tmp_path, t, o, budget={"tokens": 2000})
    est = tokens.estimate()
    assert est.candidates == 0 and "cannot pay for one structural candidate" in est.refusal
    assert "--budget-tokens to at least" in est.refusal
    with pytest.raises(ValueError, match="--budget-tokens to at least"):
        asyncio.run(tokens.arun())
    assert not t.calls and not o.calls and not (tmp_path / "run").exists()
    priced = {"task": (1.0, 2.0), "optimizer": (1.0, 2.0)}  # dollars per million tokens
    usd = prepare(tmp_path, t, o, budget={"usd": 0.001}, prices=priced).estimate()
    assert usd.candidates == 0 and "--budget-usd to at least $" in usd.refusal
    assert prepare(tmp_path, t, o, budget={"usd": 5.0}, prices=priced).estimate().candidates >= 1
    assert prepare(tmp_path, t, o, budget={"tokens": 10**6}).estimate().candidates >= 1
    tuning_only = prepare(tmp_path, t, o, budget={"tokens": 2000}, outer={"rounds": 0}).estimate()
    assert "cannot pay for one inner-loop rewrite" in tuning_only.refusal  # no structural step to price


async def test_the_estimate_counts_cached_seed_answers_as_the_run_does(tmp_path):
    """With the seed's validation and test answers in the run's cache, only a child's race (8 items
    × 1 call: the cache answers its chain of thought; a 2-call proposal) and, should it win, its 6
    test items × 2 calls are left to pay."""
    import flowbot
    run = tmp_path / "run"
    run.mkdir()
    cache = ResponseCache(run / "cache.sqlite")
    for split in ("val", "test"):
        await flowbot.aevaluate("cot", mult_task(), split=split, cache=cache, providers={"task": task_lm()},
                                model="task")
    cache.close()
    t, o = task_lm(), optimizer_lm()
    short = await prepare(tmp_path, t, o, budget={"calls": 21}, outer={"rounds": 1}).aestimate()
    assert short.candidates == 0 and "--budget-calls to at least 22" in short.refusal
    assert not t.calls and not o.calls
    enough = prepare(tmp_path, t, o, budget={"calls": 22}, outer={"rounds": 1})
    assert (await enough.aestimate()).candidates == 1
    result = await enough.arun()
    assert result.best.sketch.node_ids()[0] == "write_program" and len(result.test.results) == 6
    assert result.summary["budget"]["spent"]["calls"] <= 22
    # without the cache the seed's validation (8) and test items (6) are paid too
    fresh = prepare(tmp_path / "fresh", t, o, budget={"calls": 35}).estimate()
    assert "--budget-calls to at least 36" in fresh.refusal


async def test_changed_settings_refuse_to_reuse_a_run_dir(tmp_path):
    await prepare(tmp_path, task_lm(), optimizer_lm(), outer={"rounds": 0}).arun()
    with pytest.raises(ValueError, match="other settings"):
        await prepare(tmp_path, task_lm(), optimizer_lm(), val_size=3).arun()


def test_resume_ignores_settings_the_method_does_not_use(tmp_path):
    from flowbot.optim.rundir import RunDir, changed_settings
    first = prepare(tmp_path, task_lm(), optimizer_lm(), method="inner-only", concurrency=2)
    assert "outer" not in first.settings["optimize"] and "aflow" not in first.settings["optimize"]
    RunDir(first.run_dir).start(first.settings)
    again = prepare(tmp_path, task_lm(), optimizer_lm(), method="inner-only", concurrency=8, outer={"rounds": 9})
    assert RunDir(again.run_dir).start(again.settings)[1]
    changed = prepare(tmp_path, task_lm(), optimizer_lm(), method="inner-only", inner={"steps": 2, "demos": 0})
    with pytest.raises(ValueError, match=r"optimize\.inner\.steps"):
        RunDir(changed.run_dir).start(changed.settings)
    assert changed_settings({"a": {"x": 1, "old": 2}}, {"a": {"x": 1}}, set()) == []
    assert changed_settings({"a": {"x": 1}}, {"a": {"x": 1, "new": 3}}, set()) == ["a.new"]


def test_a_resume_may_raise_the_budget_but_not_change_how_it_is_divided(tmp_path):
    from flowbot.optim.rundir import RunDir
    first = prepare(tmp_path, task_lm(), optimizer_lm(), budget={"calls": 50})
    with RunDir(first.run_dir) as rd:
        rd.start(first.settings)
    with RunDir(first.run_dir) as rd:  # more calls, wider: the same run
        assert rd.start(prepare(tmp_path, task_lm(), optimizer_lm(), budget={"calls": 90}, concurrency=8).settings)[1]
    other_scope = prepare(tmp_path, task_lm(), optimizer_lm(), budget={"calls": 50}, budget_scope="search")
    with pytest.raises(ValueError, match=r"optimize\.budget\.scope"), RunDir(first.run_dir) as rd:
        rd.start(other_scope.settings)


def test_bad_policy_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="proposal policy"):
        prepare(tmp_path, task_lm(), optimizer_lm(), outer={"proposal": "random"})
    with pytest.raises(ValueError, match="budget scope"):
        prepare(tmp_path, task_lm(), optimizer_lm(), budget_scope="everything")
    with pytest.raises(ValueError, match="rule or rewrite"):
        prepare(tmp_path, task_lm(), optimizer_lm(), inner={"step": "append"})


def test_a_run_made_before_the_rule_step_and_the_guard_resumes_only_without_the_guard(tmp_path):
    from flowbot.optim.rundir import RunDir
    first = prepare(tmp_path, task_lm(), optimizer_lm(), inner={"specificity_guard": False})
    old = json.loads(json.dumps(first.settings))
    for key in ("step", "max_rules", "specificity_guard"):  # as a run made before these settings existed
        del old["optimize"]["inner"][key]
    with RunDir(first.run_dir) as rd:
        rd.start(old)
    with RunDir(first.run_dir) as rd:  # the guard off, rewrite steps: how that run behaved
        assert rd.start(first.settings)[1]
    guarded = prepare(tmp_path, task_lm(), optimizer_lm())
    with pytest.raises(ValueError, match=r"optimize\.inner\.specificity_guard"), RunDir(first.run_dir) as rd:
        rd.start(guarded.settings)


def test_a_run_made_before_a_setting_existed_resumes_with_its_legacy_value(tmp_path):
    from flowbot.optim.rundir import RunDir
    first = prepare(tmp_path, task_lm(), optimizer_lm())
    old = json.loads(json.dumps(first.settings))
    for key in ("schedule", "inner_steps_per_round"):  # as a run made before these settings existed
        del old["optimize"]["outer"][key]
    with RunDir(first.run_dir) as rd:
        rd.start(old)
    with RunDir(first.run_dir) as rd:
        assert rd.start(prepare(tmp_path, task_lm(), optimizer_lm()).settings)[1]  # tune-first: resumes
    with pytest.raises(ValueError, match=r"optimize\.outer\.schedule"), RunDir(first.run_dir) as rd:
        rd.start(prepare(tmp_path, task_lm(), optimizer_lm(), outer={"rounds": 2, "schedule": "alternate"}).settings)


async def test_alternate_schedule_takes_the_structural_step_before_any_tuning(tmp_path):
    events = []
    result = await prepare(tmp_path, task_lm(), optimizer_lm(), outer={"rounds": 1, "schedule": "alternate"}
                           ).arun([events.append])
    kinds = [e["type"] for e in events if e["type"] in ("proposal", "inner_step")]
    assert kinds[0] == "proposal" and "inner_step" in kinds  # structure first, then the inner step
    assert result.val_score == 1.0 and result.best.sketch.node_ids()[0] == "write_program"


async def test_the_summary_counts_the_wall_time_of_a_killed_session(tmp_path):
    """A session killed before it could finish writes no summary; its time still counts (sessions.json
    keeps its start and last event), in the finished run's ``wall_s_all_sessions``."""
    from flowbot.optim.rundir import RunDir
    first = prepare(tmp_path, task_lm(), optimizer_lm(), outer={"rounds": 0})
    with RunDir(first.run_dir) as rd:  # a session that logged its start, ran 100 s and was killed
        rd.start(first.settings)
        rd.events({"type": "run_started"})
    sessions = json.loads((first.run_dir / "sessions.json").read_text())
    sessions[0]["start"] -= 100.0
    (first.run_dir / "sessions.json").write_text(json.dumps(sessions))
    (first.run_dir / "events.jsonl").unlink()  # nothing of it to replay
    result = await prepare(tmp_path, task_lm(), optimizer_lm(), outer={"rounds": 0}).arun()
    assert result.summary["wall_s_all_sessions"] >= 100.0 > result.summary["wall_s"]


async def test_every_line_a_run_logs_reads_back_typed_and_whole_patience_included(tmp_path):
    """The driver tags every inner-loop event with the workflow it tunes; each logged line, the inner
    loop's patience among them, must read back as its class with no field left over."""
    from flowbot.optim.events import UnknownEvent, read_event
    from flowbot.optim.rundir import read_event_log

    await prepare(tmp_path, task_lm(), optimizer_lm(), method="inner-only",
                  inner={"steps": 3, "demos": 0, "patience": 1}).arun()
    lines, torn = read_event_log(tmp_path / "run" / "events.jsonl")
    assert torn is None and any(line["type"] == "patience" and line.get("candidate") for line in lines)
    for line in lines:
        rec = read_event(line)
        assert not isinstance(rec.event, UnknownEvent) and not rec.extra, line
        assert rec.to_dict() == line


async def test_a_seed_whose_outputs_are_stuck_is_warned_about_and_the_search_goes_on(tmp_path):
    # the seed answers 42 to every product: one output, scored 0 on all 12 validation items
    events = []
    result = await prepare(tmp_path, task_lm(), optimizer_lm(), task=mult_task(12), val_size=12).arun([events.append])
    warnings = [e for e in events if e["type"] == "output_warning"]
    assert len(warnings) == 1
    assert warnings[0]["message"] == ("the seed on validation: 12 of 12 outputs are {'answer': '42'}, each scored 0: "
                                      "is that an answer? (see a trace)")
    types = [e["type"] for e in events]
    assert types.index("output_warning") == types.index("seed_evaluated") + 1
    assert result.val_score == 1.0  # a warning, not a stop: program of thought still fixes it
    # on 8 items the same answer is too little to tell
    events.clear()
    await prepare(tmp_path / "b", task_lm(), optimizer_lm()).arun([events.append])
    assert not any(e["type"] == "output_warning" for e in events)

"""Inner loop with scripted task and optimizer models where the right instruction change is knowable."""

import re

from flowbot.graph import Demo, LLMNode, NodeParams, OutputFormat, Sketch, Workflow
from flowbot.lm import Budget, LMClient, LMRequest, UsageMeter
from flowbot.optim.backward import GradContext, parse_backward, parse_step
from flowbot.optim.budgeting import BudgetPlan, Price
from flowbot.optim.evaluation import Evaluator
from flowbot.optim.inner import InnerConfig, InnerLoop
from flowbot.runtime import Executor
from flowbot.tasks.seeds import build_baseline
from flowbot.testing import ScriptedLM, instructed, optimizer_prompt, prompt_fields, scripted_optimizer

from .shout import CAPS, SHOUT, Clocked, nth, rows, shouted
from .shout import optimizer_lm as shout_optimizer
from .shout import task_lm as shout_task_lm


def system_of(req: LMRequest) -> str:
    return req.messages[0][1] if req.messages and req.messages[0][0] == "system" else ""


def last_user(req: LMRequest) -> str:
    return req.messages[-1][1]


def field_value(text: str, label: str) -> str:
    m = re.search(rf"{label}:\n(.*?)(?:\n\n|$)", text, re.S)
    return m.group(1).strip() if m else ""


def exact(example, prediction):
    return float(str(prediction.get("answer")) == example["gold"])


def build(task_provider, opt_provider, config=None, budget=None, metric=exact, events=None, racing=None):
    meter = UsageMeter()
    task_lm = LMClient(task_provider, role="task", meter=meter, budget=budget)
    opt_lm = LMClient(opt_provider, role="optimizer", meter=meter, budget=budget)
    evaluator = Evaluator(Executor(task_lm), metric, concurrency=4)
    ctx = GradContext(task_description="copy the question in the right case", output_field="answer",
                      target_fields=["gold"])
    return InnerLoop(evaluator, opt_lm, ctx, config or InnerConfig(steps=3, demos=0), meter=meter,
                     on_event=(events.append if events is not None else None), racing=racing)


def one_node() -> Workflow:
    node = LLMNode(id="answer", reads=["question"], writes="answer", output=OutputFormat(extract="answer"))
    return Workflow(sketch=Sketch(inputs=["question"], outputs=["answer"], nodes=[node]),
                    params={"answer": NodeParams(instruction="Repeat the question.")})


def case_task_lm() -> ScriptedLM:
    def reply(req: LMRequest, i: int) -> str:
        q = field_value(last_user(req), "Question")
        return "Answer: " + (q.upper() if "UPPERCASE" in system_of(req) else q)
    return ScriptedLM(default=reply, model="task")


def case_optimizer(step_text="<instruction>Repeat the question in UPPERCASE letters.</instruction>") -> ScriptedLM:
    return scripted_optimizer(loss="The output is lowercase; the correct answer is uppercase.",
                              backward="GRADIENT: require UPPERCASE output.", rewrite=step_text)


def examples(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "question": f"{prefix}word{i}", "gold": f"{prefix}word{i}".upper()} for i in range(n)]


async def test_inner_loop_finds_the_required_instruction():
    events = []
    loop = build(case_task_lm(), case_optimizer(), events=events)
    result = await loop.optimize(one_node(), examples("t", 10), examples("v", 6))
    assert result.initial_val_score == 0.0
    assert result.val_score == 1.0
    assert "UPPERCASE" in result.workflow.params["answer"].instruction
    accepted = [s for s in result.steps if s.accepted]
    assert accepted and accepted[0].old == "Repeat the question." and "UPPERCASE" in accepted[0].gradient
    assert accepted[0].val_before == 0.0 and accepted[0].val_after == 1.0
    assert "optimizer" in accepted[0].cost and "task" in accepted[0].cost
    assert any(e.type == "inner_candidate" and e.race["wins"] == 6 for e in events)
    # optimizer calls are metered apart from task calls
    assert set(result.usage) == {"task", "optimizer"}


def chain() -> Workflow:
    nodes = [
        LLMNode(id="a", reads=["question"], writes="x"),
        LLMNode(id="b", reads=["x"], writes="y"),
        LLMNode(id="c", reads=["y"], writes="answer", output=OutputFormat(extract="answer")),
    ]
    params = {n: NodeParams(instruction=f"step {n}") for n in "abc"}
    return Workflow(sketch=Sketch(inputs=["question"], outputs=["answer"], nodes=nodes), params=params)


async def test_backward_blames_the_faulty_middle_node_only():
    def task(req: LMRequest, i: int) -> str:
        system, user = system_of(req), last_user(req)
        if system.startswith("step a"):
            return field_value(user, "Question")
        if "step b" in system or "FIX" in system:
            return "GOOD" if "FIX" in system else "BAD"
        return "Answer: " + field_value(user, "Y")

    backward_nodes = []

    def backward(req: LMRequest, i: int) -> str:
        node = prompt_fields("backward", req)["node_id"]
        backward_nodes.append(node)
        if node == "c":
            return "GRADIENT: NONE\nFEEDBACK[y]: y was BAD but must be GOOD."
        if node == "b":
            return "GRADIENT: step b must FIX its output.\nFEEDBACK[x]: NONE"
        return "GRADIENT: change a too"

    opt = scripted_optimizer(loss="Output BAD, expected GOOD.", backward=backward, aggregate="- FIX the output",
                             rewrite="<instruction>FIX: always produce the correct value.</instruction>")
    data = [{"id": f"e{i}", "question": f"q{i}", "gold": "GOOD"} for i in range(8)]
    loop = build(ScriptedLM(default=task), opt)
    result = await loop.optimize(chain(), data[:5], data[5:])
    assert set(backward_nodes) == {"b", "c"}  # 'a' never received feedback
    assert result.blame == {"b": result.blame["b"]} and result.blame["b"] > 0
    assert result.workflow.params["a"].instruction == "step a"
    assert result.workflow.params["c"].instruction == "step c"
    assert "FIX" in result.workflow.params["b"].instruction
    assert result.val_score == 1.0


async def test_blame_is_kept_by_the_node_that_neither_fixes_nor_passes_it_on():
    # a small optimizer model answers NONE everywhere; the output node then keeps the loss as its gradient
    prompts = []

    def backward(req: LMRequest, i: int) -> str:
        prompts.append(last_user(req))
        return "GRADIENT: NONE"

    opt = scripted_optimizer(loss="The output is lowercase; it must be UPPERCASE.", backward=backward,
                             aggregate="- answer in UPPERCASE",
                             rewrite="<instruction>Repeat the question in UPPERCASE letters.</instruction>")
    loop = build(case_task_lm(), opt)
    result = await loop.optimize(one_node(), examples("t", 10), examples("v", 6))
    assert prompts and all("or NONE" not in p for p in prompts)  # a source node is not offered NONE
    accepted = [s for s in result.steps if s.accepted]
    assert accepted and "must be UPPERCASE" in accepted[0].gradient
    assert result.val_score == 1.0


async def test_regression_on_validation_is_rejected():
    # the rewrite helps the training minibatch ("t..." questions) but breaks validation ("v...")
    def task(req: LMRequest, i: int) -> str:
        q = field_value(last_user(req), "Question")
        trick = "TRICK" in system_of(req)
        right = q.startswith("t") if trick else q.startswith("v")
        return "Answer: " + (q.upper() if right else q)

    opt = case_optimizer("<instruction>TRICK instruction</instruction>")
    loop = build(ScriptedLM(default=task), opt, InnerConfig(steps=2, demos=0, patience=5))
    result = await loop.optimize(one_node(), examples("t", 5), examples("v", 4))
    assert result.initial_val_score == 1.0 and result.val_score == 1.0
    assert result.steps and not any(s.accepted for s in result.steps)
    assert result.steps[0].race["losses"] > 0 and result.steps[0].race["wins"] == 0
    assert result.steps[0].minibatch_after > result.steps[0].minibatch_before
    assert result.workflow.params["answer"].instruction == "Repeat the question."


async def test_budget_stops_cleanly_with_best_so_far():
    """Step 1's rewrite (CAPS) wins; the budget runs out in the middle of step 2's race (SHOUT, which
    passed its minibatch check, had answered 2 of 6 items): the result is CAPS with its own complete
    validation, not SHOUT and not a mix of the two."""
    now = [0.0]
    seen: list = []
    when = nth(7, instructed(SHOUT))  # its 5 minibatch items, then the race's first two
    budget = Budget(max_seconds=100, clock=lambda: now[0])
    meter = UsageMeter()
    task = Clocked(shout_task_lm(), when, now, seen)
    task_lm = LMClient(task, role="task", meter=meter, budget=budget)
    opt_lm = LMClient(Clocked(shout_optimizer(), when, now, seen), role="optimizer", meter=meter, budget=budget)
    ctx = GradContext(task_description="repeat the question, shouting", output_field="answer",
                      target_fields=["answer"])
    loop = InnerLoop(Evaluator(Executor(task_lm), shouted, concurrency=1), opt_lm, ctx,
                     InnerConfig(steps=10, demos=0), meter=meter)
    seed = build_baseline("cot", inputs=["question"], output="answer", description="repeat the question, shouting")
    result = await loop.optimize(seed, rows("t", 10), rows("v", 6))
    assert sum(map(instructed(SHOUT), task.calls)) == 7  # the budget ran out in SHOUT's race
    assert result.stopped == "run time budget of 100 s is used up"
    assert [(s.new, s.accepted) for s in result.steps] == [(CAPS, True)] and len(result.races) == 1
    assert result.workflow.params["solve"].instruction == CAPS and result.initial_val_score == 0.0
    assert result.val.complete and len(result.val.results) == 6 and result.val_score == 0.5
    assert sorted(r.prediction["answer"] for r in result.val.results) == [f"VWORD{i}" for i in range(6)]  # CAPS
    assert result.blame == {"solve": 10}  # both steps' backward passes were complete


async def test_a_budget_that_cannot_pay_for_a_step_starts_none():
    # 6 calls score the seed; a step (forward, losses, backward, rewrite, candidate, race) needs more
    # than the 8 left, so none is started and the seed, unchanged, is the result
    budget = Budget(max_calls=14)
    loop = build(case_task_lm(), case_optimizer(), InnerConfig(steps=10, demos=0), budget=budget)
    result = await loop.optimize(one_node(), examples("t", 10), examples("v", 6))
    assert result.stopped and "cannot pay for another inner step" in result.stopped
    assert result.workflow.params["answer"].instruction == "Repeat the question." and not result.steps
    assert result.val_score == 0.0 and len(result.val.results) == 6
    assert budget.spent.calls == 6


async def test_budget_for_one_step_keeps_what_that_step_won():
    # the seed (6 calls) and one full step fit; the step's rewrite wins its race and is the result
    budget = Budget(max_calls=36)
    loop = build(case_task_lm(), case_optimizer(), InnerConfig(steps=10, demos=0), budget=budget)
    result = await loop.optimize(one_node(), examples("t", 10), examples("v", 6))
    assert len(result.steps) == 1 and result.steps[0].accepted
    assert "UPPERCASE" in result.workflow.params["answer"].instruction and result.val_score == 1.0
    assert "cannot pay for another inner step" in result.stopped and budget.spent.calls <= 36


async def tune_with_plan(limit: int, with_plan: bool = True, step_text: str | None = None, tools=None):
    """The seed scored on 6 validation items; its 30 test answers cached, so nothing is reserved."""
    budget = Budget(max_calls=limit)
    meter = UsageMeter()
    task_lm = LMClient(case_task_lm(), role="task", meter=meter, budget=budget)
    opt = case_optimizer(step_text) if step_text else case_optimizer()
    opt_lm = LMClient(opt, role="optimizer", meter=meter, budget=budget)
    ev = Evaluator(Executor(task_lm), exact, concurrency=4)
    val = examples("v", 6)
    seed_val = await ev(one_node(), val)
    plan = BudgetPlan(budget, n_val=6, n_test=30)
    plan.set_seed(Price.of(seed_val), uncached_test_items=0)
    ctx = GradContext(task_description="copy the question", output_field="answer", target_fields=["gold"])
    loop = InnerLoop(ev, opt_lm, ctx, InnerConfig(steps=3, demos=0), meter=meter, tool_options=tools,
                     plan=plan if with_plan else None)
    return await loop.optimize(one_node(), examples("t", 10), val, val_result=seed_val), plan


async def test_a_rewrite_is_raced_only_when_its_test_would_fit_once_it_won():
    """A rewrite that wins is the result, whose 30 test items must then be paid. With 50 calls, after
    the seed (6) and a step (about 22 calls with its race), they could not be."""
    unchecked, plan = await tune_with_plan(50, with_plan=False)
    assert unchecked.steps[0].accepted  # the rewrite would win its race...
    plan.reserve_test(Price.of(unchecked.val), best_is_seed=False)
    assert plan.headroom()["calls"] < 0  # ...and leave its test evaluation unpaid
    checked, plan = await tune_with_plan(50)
    assert not checked.steps and "cannot pay for another inner step" in checked.stopped
    assert plan.headroom()["calls"] >= 0


async def test_a_rewrite_that_gives_a_node_a_tool_is_priced_at_two_calls_an_example():
    # 80 calls: a one-call rewrite can be raced (6) and tested (30) after the step; the same rewrite
    # with a tool (act, then answer) would need 12 and 60
    plain, plan = await tune_with_plan(80, tools=["calculator"])
    assert plain.steps[0].accepted and plan.reserved.calls == 30
    tool_text = "<instruction>Repeat the question in UPPERCASE letters.</instruction>\n<tools>calculator</tools>"
    tooled, plan = await tune_with_plan(80, step_text=tool_text, tools=["calculator"])
    assert [s.accepted for s in tooled.steps] == [False] and tooled.steps[0].race is None
    assert "its test evaluation do not fit" in tooled.steps[0].reason
    assert plan.headroom()["calls"] >= 0


async def test_a_winning_rewrite_has_its_test_reserved_at_once():
    budget = Budget(max_calls=200)
    loop = build(case_task_lm(), case_optimizer(), InnerConfig(steps=1, demos=0), budget=budget)
    val = examples("v", 6)
    seed_val = await loop.evaluate(one_node(), val)
    loop.plan = plan = BudgetPlan(budget, n_val=6, n_test=30)
    plan.set_seed(Price.of(seed_val), uncached_test_items=0)
    result = await loop.optimize(one_node(), examples("t", 10), val, val_result=seed_val)
    assert result.steps[0].accepted and plan.reserved.calls == 30


async def test_another_acceptance_policy_decides_the_inner_loop(strict_gain):
    # the rewrite puts one of the six validation answers right: 1 win, 0 losses
    def task(req: LMRequest, i: int) -> str:
        q = field_value(last_user(req), "Question")
        return "Answer: " + (q.upper() if "UPPERCASE" in system_of(req) and q.endswith("0") else q)

    config = InnerConfig(steps=1, demos=0, minibatch_gate=False)
    paired = await build(ScriptedLM(default=task), case_optimizer(), config).optimize(
        one_node(), examples("t", 5), examples("v", 6))
    assert not paired.steps[0].accepted and "below the margin" in paired.steps[0].reason
    loop = build(ScriptedLM(default=task), case_optimizer(), config, racing=strict_gain)
    result = await loop.optimize(one_node(), examples("t", 5), examples("v", 6))
    assert strict_gain.decisions == [(1, 0, True)] and result.steps[0].accepted
    assert result.steps[0].reason == "a strict gain" and "UPPERCASE" in result.workflow.params["answer"].instruction


async def test_global_feedback_variant_skips_backward():
    opt = case_optimizer()
    loop = build(case_task_lm(), opt, InnerConfig(steps=1, demos=0, feedback="global"))
    result = await loop.optimize(one_node(), examples("t", 5), examples("v", 3))
    assert not any(optimizer_prompt("backward")(r) for r in opt.calls)
    assert result.val_score == 1.0


async def test_metric_feedback_reaches_the_textual_loss():
    opt = case_optimizer()

    def metric(example, prediction):
        ok = prediction.get("answer") == example["gold"]
        return (1.0 if ok else 0.0), ("" if ok else "SHOUTING REQUIRED")

    loop = build(case_task_lm(), opt, InnerConfig(steps=1, demos=0), metric=metric)
    await loop.optimize(one_node(), examples("t", 5), examples("v", 3))
    losses = [r for r in opt.calls if optimizer_prompt("loss")(r)]
    assert losses and all("SHOUTING REQUIRED" in last_user(r) for r in losses)


def upper_when_shown_demos() -> ScriptedLM:
    """Answers in upper case (right for every example) when the prompt holds demos, else repeats the
    question (right only for the UP examples)."""
    def task(req: LMRequest, i: int) -> str:
        q = field_value(last_user(req), "Question")
        return "Answer: " + (q.upper() if len(req.messages) > 2 else q)
    return ScriptedLM(default=task)


async def test_demos_bootstrapped_from_successful_traces():
    # half the questions are already right (they are upper case); demos from them help the rest
    train = [{"id": f"u{i}", "question": f"UP{i}", "gold": f"UP{i}"} for i in range(3)] + examples("t", 3)
    opt = case_optimizer("<instruction>same</instruction>")
    loop = build(upper_when_shown_demos(), opt, InnerConfig(steps=1, demos=2, minibatch_size=6))
    result = await loop.optimize(one_node(), train, examples("v", 3))
    assert len(result.workflow.params["answer"].demos) == 2
    assert any(s.change == "demos" and s.accepted for s in result.steps)


async def test_demos_that_only_tie_are_not_kept():
    # demos do not change the (scripted) answers but lengthen every prompt: no win, so racing keeps the
    # workflow without them (a tie is accepted only when the candidate is cheaper)
    def task(req: LMRequest, i: int) -> str:
        return "Answer: " + field_value(last_user(req), "Question")

    train = [{"id": f"u{i}", "question": f"UP{i}", "gold": f"UP{i}"} for i in range(3)] + examples("t", 3)
    val = [{"id": "v0", "question": "V0", "gold": "V0"}] + examples("v", 2)  # 1/3 right either way
    cfg = InnerConfig(steps=1, demos=2, minibatch_size=6, minibatch_gate=False)
    loop = build(ScriptedLM(default=task), case_optimizer("<instruction>Repeat the question.</instruction>"), cfg)
    result = await loop.optimize(one_node(), train, val)
    demo_step = next(s for s in result.steps if s.change == "demos")
    assert demo_step.race["wins"] == demo_step.race["losses"] == 0 and not demo_step.accepted
    assert result.workflow.params["answer"].demos == []


def first_demo_is_bad_task(seen: list[str]) -> ScriptedLM:
    """Answers in upper case (right) when shown a demo, unless it is the first demo question it was
    ever shown (``seen[0]``): so only a second, different demo set can help."""

    def task(req: LMRequest, i: int) -> str:
        q = field_value(last_user(req), "Question")
        shown = [field_value(m[1], "Question") for m in req.messages[1:-1] if m[0] == "user"]
        if shown and not seen:
            seen.append(shown[0])
        return "Answer: " + (q.upper() if shown and seen[0] not in shown else q)

    return ScriptedLM(default=task)


async def test_a_second_demo_set_of_examples_not_shown_before_is_raced_when_demo_sets_allow():
    train = [{"id": f"u{i}", "question": f"UP{i}", "gold": f"UP{i}"} for i in range(3)] + examples("t", 3)
    val = examples("v", 4)

    first_shown: list[str] = []

    async def tune(demo_sets):
        first_shown.clear()
        cfg = InnerConfig(steps=2, demos=1, demo_sets=demo_sets, minibatch_size=6, minibatch_gate=False)
        loop = build(first_demo_is_bad_task(first_shown), case_optimizer("<instruction>Repeat the question.</instruction>"), cfg)
        return await loop.optimize(one_node(), train, val)

    one, two = await tune(1), await tune(2)
    # one set per node (the default): the first set loses and no other is tried
    assert [s.accepted for s in one.steps if s.change == "demos"] == [False]
    assert one.val_score == 0.0 and one.workflow.params["answer"].demos == []
    # two sets: the second is of an example the first did not show, and it wins
    sets = [s for s in two.steps if s.change == "demos"]
    assert [s.accepted for s in sets] == [False, True] and two.val_score == 1.0
    (kept,) = two.workflow.params["answer"].demos
    assert kept.inputs["question"].startswith("UP") and kept.inputs["question"] != first_shown[0]


async def test_with_one_demo_set_a_node_that_has_demos_keeps_them_and_with_more_it_races_a_fresh_set():
    train = [{"id": f"u{i}", "question": f"UP{i}", "gold": f"UP{i}"} for i in range(3)]
    wf = one_node()
    old = Demo(inputs={"question": "OLD"}, output="Answer: OLD")
    wf = wf.with_params("answer", demos=[old])
    # three solved examples: a fresh set of 2, then of the 1 left, then none (nothing is raced)
    for demo_sets, raced in ((1, 0), (3, 2)):
        cfg = InnerConfig(steps=3, demos=2, demo_sets=demo_sets, minibatch_size=3, minibatch_gate=False)
        loop = build(case_task_lm(), case_optimizer("<instruction>Repeat the question.</instruction>"), cfg)
        result = await loop.optimize(wf, train, examples("v", 3))
        assert sum(s.change == "demos" for s in result.steps) == raced
        assert result.workflow.params["answer"].demos == [old]  # the fresh sets only tie: not kept


async def test_demo_bootstrap_fills_a_set_from_further_solved_training_examples():
    # 6 of 12 training examples are solved without demos; a minibatch of 2 holds at most 2 of them
    train = [{"id": f"u{i}", "question": f"UP{i}", "gold": f"UP{i}"} for i in range(6)] + examples("t", 6)

    async def tune(bootstrap):
        cfg = InnerConfig(steps=1, demos=3, demo_bootstrap=bootstrap, minibatch_size=2, minibatch_gate=False)
        # the rewrite changes nothing the scripted model does: it is raced and lost before the demos
        loop = build(upper_when_shown_demos(), case_optimizer("<instruction>Repeat it.</instruction>"), cfg)
        result = await loop.optimize(one_node(), train, examples("v", 3))
        return result, [s for s in result.steps if s.change == "demos"]

    plain, plain_sets = await tune(0)
    assert len(plain_sets) <= 1 and all("run to fill" not in s.gradient for s in plain_sets)
    assert len(plain.workflow.params["answer"].demos) < 3  # the minibatch alone cannot fill the set
    filled, (step,) = await tune(10)
    ran = int(re.search(r"\((\d+) training examples run to fill the set\)", step.gradient).group(1))
    demos = filled.workflow.params["answer"].demos
    # full, of solved examples only, and the filling stopped once the set was full, short of its cap
    assert step.new == "3 demos" and step.accepted and len(demos) == 3 and filled.val_score == 1.0
    assert all(d.inputs["question"].startswith("UP") for d in demos)
    assert 1 <= ran < 10
    # what filling the set cost is in its record, with its minibatch (2) and its race (3)
    assert step.cost["task"]["calls"] == ran + 2 + 3
    capped, (short,) = await tune(1)
    assert "(1 training examples run to fill the set)" in short.gradient and short.new != "3 demos"


def teaching_optimizer(solve=None) -> ScriptedLM:
    """The optimizer's prompts as ``case_optimizer``'s (a rewrite that changes nothing), and, run as
    the task model, ``solve`` (by default always right: it answers in upper case)."""
    def upper(req: LMRequest, i: int) -> str:
        return "Answer: " + field_value(last_user(req), "Question").upper()
    rules = [(optimizer_prompt(name), reply) for name, reply in
             (("loss", "The output is lowercase; the correct answer is uppercase."),
              ("backward", "GRADIENT: require UPPERCASE output."),
              ("rewrite", "<instruction>Repeat it.</instruction>"))]
    return ScriptedLM(rules, default=solve or upper, model="optimizer")


async def test_demo_teacher_shows_the_task_model_what_the_optimizer_model_solved():
    # the task model solves no training example alone, so only a teacher can give it demos
    train, val = examples("t", 8), examples("v", 3)

    async def tune(teacher, bootstrap=0):
        cfg = InnerConfig(steps=1, demos=2, demo_teacher=teacher, demo_bootstrap=bootstrap, minibatch_size=3,
                          minibatch_gate=False)
        loop = build(upper_when_shown_demos(), teaching_optimizer(), cfg)
        return loop, await loop.optimize(one_node(), train, val)

    _, alone = await tune("task", bootstrap=5)
    assert not alone.workflow.params["answer"].demos and alone.val_score == 0.0
    loop, taught = await tune("optimizer")
    (step,) = [s for s in taught.steps if s.change == "demos"]
    demos = taught.workflow.params["answer"].demos
    assert step.accepted and taught.val_score == 1.0 and len(demos) == 2
    assert "optimizer model as teacher (2 training examples run)" in step.gradient
    # the teacher ran only the minibatch's failures it needed, and its calls are the optimizer's
    assert {d.inputs["question"] for d in demos} <= {ex["question"] for ex in train[:8]}
    assert all(d.output == "Answer: " + d.inputs["question"].upper() for d in demos)
    assert step.cost["optimizer"]["calls"] >= 2 and step.cost["task"]["calls"] == 3 + 3
    # the teacher's results are its own: the task model still fails the examples the teacher solved
    solved = [ex for ex in train if ex["question"] in {d.inputs["question"] for d in demos}]
    assert (await loop.evaluate(one_node(), solved)).score == 0.0


async def test_demo_teacher_goes_on_to_further_training_examples_up_to_its_cap():
    # the teacher fails the odd examples: the minibatch's failures give one demo, the bootstrap the rest
    def solve(req: LMRequest, i: int) -> str:
        q = field_value(last_user(req), "Question")
        return "Answer: " + (q.upper() if int(q[-1]) % 2 == 0 else q)
    teacher = teaching_optimizer(solve)
    train = examples("t", 10)
    for bootstrap, demos in ((0, 1), (6, 2)):
        cfg = InnerConfig(steps=1, demos=2, demo_teacher="optimizer", demo_bootstrap=bootstrap, minibatch_size=2,
                          minibatch_gate=False)
        result = await build(upper_when_shown_demos(), teacher, cfg).optimize(one_node(), train, examples("v", 3))
        (step,) = [s for s in result.steps if s.change == "demos"]
        assert step.new == f"{demos} demos"
        ran = int(re.search(r"\((\d+) training examples run\)", step.gradient).group(1))
        assert ran == 2 if bootstrap == 0 else 2 < ran <= 2 + bootstrap


def test_parsers_are_forgiving():
    g, up = parse_backward("GRADIENT: be precise\nmore detail\nFEEDBACK[x]: none\nFEEDBACK[y]: wrong", ["x", "y"])
    assert g == "be precise\nmore detail" and up == {"x": "", "y": "wrong"}
    g, up = parse_backward("The step is fine.", ["x"])
    assert g == "The step is fine." and up == {"x": ""}
    assert parse_step("blah <instruction>New text</instruction>").instruction == "New text"
    assert parse_step("```\nFenced\n```").instruction == "Fenced"
    p = parse_step("<instruction>Use tools</instruction><tools>python, calculator</tools>")
    assert p.tools == ["python", "calculator"]


# -- the rule step and the specificity guard ----------------------------------------------------
def rule_optimizer(*rules: str) -> ScriptedLM:
    """An optimizer whose rule proposals come in order (the last one repeats)."""
    replies = list(rules)

    def rule(req: LMRequest, i: int) -> str:
        return replies.pop(0) if len(replies) > 1 else replies[0]

    return scripted_optimizer(loss="The output is lowercase; the correct answer is uppercase.",
                              backward="GRADIENT: require UPPERCASE output.", rule=rule)


async def test_the_rule_step_adds_one_general_rule_and_keeps_the_instruction():
    opt = rule_optimizer("RULE: Write the answer in UPPERCASE letters.")
    loop = build(case_task_lm(), opt, InnerConfig(steps=1, demos=0, step="rule"))
    result = await loop.optimize(one_node(), examples("t", 5), examples("v", 4))
    assert result.workflow.params["answer"].instruction == (
        "Repeat the question.\n\nRules:\n- Write the answer in UPPERCASE letters.")
    assert result.val_score == 1.0 and result.steps[0].change == "rule" and result.steps[0].accepted
    # the rule step reads the per-example gradients as they are: no aggregation call
    assert not any(optimizer_prompt("aggregate")(r) for r in opt.calls)
    # and the cases the step failed on: what it read, what it wrote, the correct final answer
    (ask,) = [r for r in opt.calls if optimizer_prompt("rule")(r)]
    assert re.search(r"1\. read question: tword\d \| wrote tword\d \| correct final answer: TWORD\d", last_user(ask))


async def test_demos_come_from_the_runs_pool_newest_first():
    # a pool shared by the run's tune calls: one call's solved training examples are the next one's demos
    def task(req: LMRequest, i: int) -> str:
        q = field_value(last_user(req), "Question")
        return "Answer: " + (q.upper() if len(req.messages) > 2 or q.isupper() else q)

    pool = []
    train = [{"id": f"u{i}", "question": f"UP{i}", "gold": f"UP{i}"} for i in range(4)] + examples("t", 4)
    first = build(ScriptedLM(default=task), case_optimizer("<instruction>same</instruction>"),
                  InnerConfig(steps=1, demos=1, minibatch_size=4, minibatch_gate=False))
    await first.optimize(one_node(), train[:4], examples("v", 3), demo_pool=pool)
    assert sorted(r.example_id for r in pool) == ["u0", "u1", "u2", "u3"]
    second = build(ScriptedLM(default=task), case_optimizer("<instruction>same</instruction>"),
                   InnerConfig(steps=1, demos=1, minibatch_size=4))
    result = await second.optimize(one_node(), train[4:], examples("v", 3), demo_pool=pool)
    (demo,) = result.workflow.params["answer"].demos  # from the first call's pool: this minibatch solved none
    assert demo.inputs["question"] == pool[-1].example["question"]


async def test_a_rule_naming_the_minibatch_is_asked_again_then_dropped_before_any_evaluation():
    # "TWORD0" is a minibatch question: the rule memorises it; asked again (sampled, told why), the
    # optimizer does it again, and the change is dropped without a single task call
    opt = rule_optimizer("RULE: When asked about TWORD0, answer TWORD0.")
    task = case_task_lm()
    loop = build(task, opt, InnerConfig(steps=1, demos=0, step="rule", minibatch_size=5))
    result = await loop.optimize(one_node(), examples("t", 5), examples("v", 4))
    rule_calls = [r for r in opt.calls if optimizer_prompt("rule")(r)]
    assert len(rule_calls) == 2 and "'TWORD0'" in last_user(rule_calls[1]) and rule_calls[1].temperature > 0
    dropped = [s for s in result.steps if s.reason.startswith("too specific")]
    assert len(dropped) == 2 and all(s.minibatch_after is None and not s.accepted for s in dropped)
    assert result.workflow.params["answer"].instruction == "Repeat the question."
    assert len(task.calls) == 4 + 5  # the seed's validation and the minibatch forward, nothing else


async def test_a_second_rule_that_generalises_is_judged():
    opt = rule_optimizer("RULE: Answer TWORD3 in capitals.", "RULE: Write the answer in UPPERCASE letters.")
    loop = build(case_task_lm(), opt, InnerConfig(steps=1, demos=0, step="rule"))
    result = await loop.optimize(one_node(), examples("t", 5), examples("v", 4))
    assert [s.reason.startswith("too specific") for s in result.steps] == [True, False]
    assert result.val_score == 1.0 and "UPPERCASE" in result.workflow.params["answer"].instruction


async def test_the_guard_drops_a_rewrite_that_names_the_minibatch_unless_turned_off():
    memorised = "<instruction>Answer TWORD1 and TWORD2 in UPPERCASE.</instruction>"
    guarded = build(case_task_lm(), case_optimizer(memorised), InnerConfig(steps=1, demos=0))
    result = await guarded.optimize(one_node(), examples("t", 5), examples("v", 4))
    assert result.steps[0].reason.startswith("too specific") and result.val_score == 0.0
    unguarded = build(case_task_lm(), case_optimizer(memorised), InnerConfig(steps=1, demos=0,
                                                                             specificity_guard=False))
    result = await unguarded.optimize(one_node(), examples("t", 5), examples("v", 4))
    assert result.val_score == 1.0  # the same rewrite, judged: it happens to work here


async def test_a_node_with_max_rules_is_left_alone():
    wf = one_node().with_params("answer", instruction="Repeat.\n\nRules:\n- one\n- two")
    opt = rule_optimizer("RULE: Write the answer in UPPERCASE letters.")
    loop = build(case_task_lm(), opt, InnerConfig(steps=1, demos=0, step="rule", max_rules=2))
    result = await loop.optimize(wf, examples("t", 5), examples("v", 4))
    assert not result.steps and not any(optimizer_prompt("rule")(r) for r in opt.calls)


def test_rule_replies_are_parsed_forgivingly():
    from flowbot.optim.backward import parse_rule
    assert parse_rule("Sure!\n**RULE:** Use digits only.") == "Use digits only."
    assert parse_rule("Use digits only.") == "Use digits only."
    assert parse_rule("RULE: none") is None and parse_rule("") is None
    assert len(parse_rule("RULE: " + "word " * 200)) <= 300

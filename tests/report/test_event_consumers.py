"""The consumers of run events (the progress display, the report, ``flowbot runs``, the MLflow
adapter) read them only through the typed classes of :mod:`flowbot.optim.events`:

- statically: no consumer names an event type as a string (they dispatch on classes), and every
  attribute read on an event whose class the code has narrowed (``isinstance``, ``run.first(C)``,
  ``run.of_type(C)``, ``run.logged(C)``, an annotated parameter) is a field that class declares;
- at run time: every consumer takes a log holding one event of every class, complete, and one
  holding every class with no fields at all (as a much older version might have written), without
  an error (an undeclared attribute of a dataclass raises AttributeError).
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from flowbot.cli.progress import RunPrinter
from flowbot.optim import events as ev
from flowbot.report.html import render_report
from flowbot.report.rundata import load_run
from flowbot.report.runs import run_info

from .conftest import make_run, optimizer_lm, task_lm

ROOT = Path(__file__).resolve().parents[2] / "flowbot"
#: the modules that read run events
CONSUMERS = ["cli/progress.py", "report/rundata.py", "report/html.py", "report/plots.py", "report/runs.py",
             "integrations/mlflow.py", "api.py"]
#: consumers that must not even mention an event type by its logged name
NO_TYPE_NAMES = [c for c in CONSUMERS if c != "api.py"]

CLASSES = {name: cls for name, cls in vars(ev).items()
           if isinstance(cls, type) and issubclass(cls, ev.Event) and cls is not ev.Event}
LOGGED_ATTRS = {f.name for f in dataclasses.fields(ev.LoggedEvent)} | {"type", "has", "to_dict"}
#: functions that return events of the classes they are given (or LoggedEvents of them: ``logged``)
ONE, MANY, MANY_LOGGED = {"first", "first_event"}, {"of_type"}, {"logged"}


def declared(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} | {"type", "to_dict"}


# -- the static check --------------------------------------------------------------------------
class FieldChecker(ast.NodeVisitor):
    """Every ``X.attr`` where X is known to hold an event of classes K reads a field all of K declare
    (and ``X.attr`` where X holds a LoggedEvent reads one of its attributes). What X holds is known
    from ``isinstance`` tests (in an ``if``, an ``and``, a conditional expression, a comprehension's
    ``if``), from the typed accessors (``first``, ``of_type``, ``logged``) and from annotations."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.env: dict[str, tuple[type, ...]] = {}  # expression (as source) -> the classes it may be
        self.checked = 0
        self.errors: list[str] = []

    # what an expression is
    def _classes(self, node: ast.AST) -> tuple[type, ...]:
        if isinstance(node, ast.Name) and node.id in CLASSES:
            return (CLASSES[node.id],)
        if isinstance(node, ast.Tuple):
            return tuple(c for elt in node.elts for c in self._classes(elt))
        if isinstance(node, ast.Subscript):  # list[C], dict[str, list[C]] ... : the innermost classes
            return self._classes(node.slice)
        return ()

    def _accessor(self, node: ast.AST) -> tuple[str, tuple[type, ...]] | None:
        if not isinstance(node, ast.Call):
            return None
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        classes = tuple(c for a in node.args for c in self._classes(a))
        for kind, names in (("one", ONE), ("many", MANY), ("logged", MANY_LOGGED)):
            if name in names and classes:
                return kind, classes
        return None

    def _narrowings(self, test: ast.AST) -> dict[str, tuple[type, ...]]:
        out: dict[str, tuple[type, ...]] = {}
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            for value in test.values:
                out.update(self._narrowings(value))
        elif (isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "isinstance"
              and len(test.args) == 2 and self._classes(test.args[1])):
            out[ast.unparse(test.args[0])] = self._classes(test.args[1])
        return out

    def _with(self, bindings: dict[str, tuple[type, ...]], nodes: list[ast.AST]) -> None:
        saved = dict(self.env)
        self.env.update(bindings)
        for n in nodes:
            self.visit(n)
        self.env = saved

    def _bind_target(self, target: ast.AST, kind: str, classes: tuple[type, ...]) -> dict[str, tuple[type, ...]]:
        name = ast.unparse(target)
        if kind == "logged":
            return {name: (ev.LoggedEvent,), f"{name}.event": classes}
        return {name: classes}

    # binding forms
    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self._with(self._narrowings(node.test), node.body)
        for n in node.orelse:
            self.visit(n)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        self._with(self._narrowings(node.test), [node.body])
        self.visit(node.orelse)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        if not isinstance(node.op, ast.And):
            return self.generic_visit(node)
        saved = dict(self.env)
        for value in node.values:
            self.visit(value)
            self.env.update(self._narrowings(value))
        self.env = saved

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        found = self._accessor(node.value)
        for target in node.targets:
            name = ast.unparse(target)
            for key in [k for k in self.env if k == name or k.startswith(name + ".")]:
                del self.env[key]  # rebound
            if found and found[0] == "one" and isinstance(target, ast.Name):
                self.env[name] = found[1]
            self.visit(target)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        found = self._accessor(node.iter)
        bindings = self._bind_target(node.target, found[0], found[1]) if found and found[0] != "one" else {}
        self._with(bindings, node.body)
        for n in node.orelse:
            self.visit(n)

    def _comprehension(self, node: ast.AST, results: list[ast.AST]) -> None:
        saved = dict(self.env)
        for gen in node.generators:  # type: ignore[attr-defined]
            self.visit(gen.iter)
            found = self._accessor(gen.iter)
            if found and found[0] != "one":
                self.env.update(self._bind_target(gen.target, found[0], found[1]))
            for cond in gen.ifs:
                self.visit(cond)
                self.env.update(self._narrowings(cond))
        for r in results:
            self.visit(r)
        self.env = saved

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        bindings = {}
        for arg in node.args.args + node.args.kwonlyargs:
            if arg.annotation is not None:
                classes = self._classes(arg.annotation)
                if classes and not isinstance(arg.annotation, ast.Subscript):
                    bindings[arg.arg] = classes
        saved = self.env
        self.env = dict(bindings)  # a function's body starts from its own parameters
        for n in node.body:
            self.visit(n)
        self.env = saved

    visit_AsyncFunctionDef = visit_FunctionDef

    # the check
    def visit_Attribute(self, node: ast.Attribute) -> None:
        owner = ast.unparse(node.value)
        classes = self.env.get(owner)
        if classes:
            allowed = set.intersection(*(LOGGED_ATTRS if c is ev.LoggedEvent else declared(c) for c in classes))
            self.checked += 1
            if node.attr not in allowed:
                names = "/".join(c.__name__ for c in classes)
                self.errors.append(f"{self.where}:{node.lineno}: {owner}.{node.attr} — {names} declares no "
                                   f"field {node.attr!r}")
        self.generic_visit(node)


def check_source(source: str, where: str = "<snippet>") -> FieldChecker:
    checker = FieldChecker(where)
    checker.visit(ast.parse(source))
    return checker


@pytest.mark.parametrize("module", CONSUMERS)
def test_consumers_read_only_fields_their_event_classes_declare(module):
    checker = check_source((ROOT / module).read_text(encoding="utf-8"), module)
    assert not checker.errors, "\n".join(checker.errors)
    assert checker.checked >= 1, f"{module}: no event field read was recognised (the check would see nothing)"


def test_the_field_check_catches_an_undeclared_field():
    snippet = textwrap.dedent("""
        def row(run, rec):
            e = rec.event
            if isinstance(e, ProposalMade):
                ok = e.critique
            elif isinstance(e, CandidateRejected):
                bad = e.critique            # a rejection has no critique
            for r in run.logged(CandidateAccepted):
                ok, bad = r.seq, r.event.rationale
            started = run.first(RunStarted)
            bad = started.model if started else None
            xs = [w.mesage for w in run.of_type(BudgetWarning)]
            ys = [r.event.score for r in run.events if isinstance(r.event, TestEvaluated) and r.event.scor]

        def one(e: InnerCandidate):
            return e.accepted, e.val
    """)
    errors = check_source(snippet).errors
    wrong = ["e.critique", "r.event.rationale", "started.model", "w.mesage", "r.event.scor", "e.val"]
    assert len(errors) == len(wrong) and all(any(f" {w} " in err for err in errors) for w in wrong), errors


#: the same words meaning something else: (module, word) -> what it is there
NOT_EVENT_TYPES = {("report/runs.py", "proposal"): "the optimizer setting behind --proposal"}


@pytest.mark.parametrize("module", NO_TYPE_NAMES)
def test_consumers_never_name_an_event_type_as_a_string(module):
    names = set(ev.READABLE_TYPES)
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    found = sorted({n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names
                    and (module, n.value) not in NOT_EVENT_TYPES})
    assert not found, f"{module} dispatches on type names {found}: use the classes of flowbot.optim.events"


# -- every consumer, every event class ------------------------------------------------------------
WF = {"sketch": {"inputs": ["question"], "outputs": ["answer"], "nodes": []}, "params": {}}
USAGE = {"task": {"calls": 3, "prompt_tokens": 100, "completion_tokens": 20, "cost_usd": 0.001}}
COMPLETE = [  # one of every class, every field filled as a real run fills it (legacy ones as they were)
    ev.RunStarted(method="flowbot", task="mult", resumed=False, sizes={"train": 2, "val": 2, "test": 2},
                  budget="calls 100", task_model="task", optimizer_model="optimizer"),
    ev.SeedEvaluated(val_score=0.5, calls=2, tokens=300, cost_usd=0.001),
    ev.BudgetPlanned(search="calls 100", reserved_for_test="2 calls", scope="all", seed_tuning="50%",
                     child_full_validation={"calls": 2.0}),
    ev.BudgetWarning(message="the budget is small"),
    ev.OutputWarning(message="12 of 12 outputs are {'answer': '42'}, each scored 0"),
    ev.InnerCandidate(step=1, node_id="solve", change="instruction", old="Solve.", new="Solve exactly.",
                      gradient="be exact", minibatch_before=0.5, minibatch_after=1.0, val_before=0.5, val_after=1.0,
                      accepted=True, reason="won the race", cost=USAGE, race={"wins": 1, "losses": 0}, candidate="c0"),
    ev.InnerCandidate(step=1, node_id="solve", change="rule", old="Solve.", new="Solve. Rule: x.", gradient="g",
                      minibatch_before=0.5, minibatch_after=None, val_before=0.5, val_after=None, accepted=False,
                      reason="too specific"),
    ev.InnerStep(step=1, failing=1, nodes_stepped=1, val_score=1.0, usage=USAGE, candidate="c0"),
    ev.Patience(loop="inner", step=1),
    ev.CandidateEvaluated(id="c0", parent=None, edit="", val_score=1.0, cost_per_example=0.001,
                          tokens_per_example=150.0, nodes=1, race=None, workflow=WF, objective=1.0,
                          initial_val_score=0.5, inner_steps=1),
    ev.CandidateAccepted(id="c0", val_score=1.0, objective=1.0, reason="the seed"),
    ev.ProposalMade(parent="c0", status="valid", attempt=1, edit="program_of_thought(solve)", critique="compute it"),
    ev.ProposalMade(parent="c0", status="invalid", attempt=2, error="no such node", repaired=True),
    ev.CandidateRejected(parent="c0", edit="ensemble(solve)", reason="raced out"),
    ev.CandidateRejected(parent="c0", edit=None, reason="invalid", error="bad", first_error="worse", same_as="c0"),
    ev.CandidateProposed(parent="c0", edit="add_step(solve)", rationale="check it", attempt=1),
    ev.EditRepaired(parent="c0", error="no such field"),
    ev.CandidateEvaluated(id="c1", parent="c0", edit="program_of_thought(solve)", val_score=None,
                          cost_per_example=0.002, tokens_per_example=300.0, nodes=2,
                          race={"evaluated": 1, "total": 2, "wins": 0, "losses": 1}, workflow=WF,
                          blame={"solve": 1}, inner_stopped="patience"),
    ev.InnerPatience(step=2, patience=1),
    ev.OuterPatience(round=1),
    ev.Patience(loop="outer", step=1),
    ev.TestEvaluated(id="c0", score=0.5, n=2),
    ev.TestEvaluated(id="seed", score=0.5, n=2),
    ev.RunFinished(best="c0", val_score=1.0, test_score=0.5, stopped=None),
]


def test_the_sample_log_has_every_event_class():
    assert {type(e) for e in COMPLETE} == set(ev.READABLE_TYPES.values())


def write_run(path: Path, lines: list[dict]) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"run_id": "r1", "config": {"task": "mult"}}))
    (path / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


class FakeMlflow:
    def __init__(self) -> None:
        self.metrics: list[tuple[str, float]] = []
        self.tags: dict[str, str] = {}

    def log_batch(self, run_id, metrics):
        self.metrics += [(m.key, m.value) for m in metrics]

    def set_tag(self, run_id, key, value):
        self.tags[key] = value


def feed_consumers(lines: list[dict], tmp_path: Path) -> tuple[str, str, FakeMlflow | None]:
    """The page, the progress lines and the MLflow calls for ``lines``; an error in any of them fails."""
    run = write_run(tmp_path / "run", lines)
    page = render_report(load_run(run))
    assert run_info(run).task == "mult"
    out = io.StringIO()
    printer = RunPrinter(Console(file=out, width=300, color_system=None))
    for line in lines:
        printer.on_event(dict(line))
        printer.on_event(ev.read_event(line))  # the typed form too
    client = None
    try:
        from flowbot.integrations.mlflow import MlflowRun
        import mlflow  # noqa: F401
    except ImportError:
        pass
    else:
        tracker = MlflowRun.__new__(MlflowRun)
        client = FakeMlflow()
        tracker.client, tracker.run_id, tracker.skip_replayed = client, "r", True
        tracker._best, tracker._calls, tracker._last_spend, tracker._warned = None, 0, {}, False
        for line in lines:
            tracker._log_event(ev.read_event(line))  # unguarded: an AttributeError fails the test
    return page, out.getvalue(), client


def test_every_consumer_reads_every_event_class(tmp_path):
    lines = [{"seq": i, **e.to_dict(), "usage_total": USAGE, "time": 1.7e9 + i} for i, e in enumerate(COMPLETE, 1)]
    page, printed, client = feed_consumers(lines, tmp_path)
    # what each class contributes shows (read from the declared fields)
    assert "the budget is small" in page and "compute it" in page and "first error: worse" in page
    assert "check it" in page and "error: no such field" in page and "✗ ensemble(solve) — dropped: raced out" in page
    assert "The inner loop stopped early for lack of progress 2 time(s)" in page  # Patience and the legacy form
    assert "The outer loop stopped for lack of progress" in page
    assert "inner step 1: rule of solve: minibatch 0.50 → not run rejected (too specific)" in printed
    assert "c1 (program_of_thought(solve)): raced out after 1 of 2 items; vs incumbent 0W/1L" in printed
    assert "test (seed): 0.500 on 2 examples" in printed
    if client is not None:
        assert ("seed_val_score", 0.5) in client.metrics and ("test_score", 0.5) in client.metrics
        assert client.tags == {"flowbot.stopped": "no", "flowbot.best": "c0"}


def test_every_consumer_takes_events_that_carry_nothing_but_their_type(tmp_path):
    lines = [{"type": name} for name in ev.READABLE_TYPES] + [{"type": "from_a_newer_flowbot", "x": 1}, {}]
    page, printed, _ = feed_consumers(lines, tmp_path)
    assert "FlowBot run report" in page and "seed: validation score ?" in printed


def test_a_callback_gets_a_dict_and_a_typed_callback_the_event(tmp_path):
    dicts, typed = [], []
    make_run(tmp_path / "run", task_lm(), optimizer_lm(),
             callbacks=[dicts.append, ev.typed_callback(typed.append)])
    assert dicts and all(isinstance(d, dict) and "type" in d and "replayed" in d for d in dicts)
    assert [{**r.to_dict(), "replayed": r.replayed} for r in typed] == dicts
    assert not any(isinstance(r.event, ev.UnknownEvent) for r in typed)
    assert [r.type for r in typed] == [d["type"] for d in dicts]

"""The ``flowbot`` command: run, show, eval, optimize, report, export, models, tasks, metrics.

    $ flowbot optimize --task gsm8k --budget-calls 400          # the embedded model, no key needed
    $ flowbot eval --task gsm8k --workflow cot --workflow sc --limit 50
    $ flowbot run best.json --input '{"question": "..."}' --trace
    $ flowbot optimize --data train.jsonl --input question --target answer --metric f1

API keys are read from the environment only (e.g. OPENAI_API_KEY), never from options.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from flowbot.cli.errors import handled
from flowbot.errors import FlowBotError
from flowbot.optim import defaults as D
from flowbot.version import __version__

app = typer.Typer(name="flowbot", help="Induce LLM workflows from data: optimize structure and prompts together.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ModelOpt = typer.Option(None, "--model", "-m", help="Task model: a hosted name (gpt-4o-mini, anthropic/...), "
                        "a local model (qwen2.5-coder-1.5b) or a .gguf path. Default: a hosted model when a "
                        "provider key is set, else the embedded qwen2.5-coder-1.5b.")
BaseUrlOpt = typer.Option(None, "--base-url", help="An OpenAI-compatible server for the model (vLLM, Ollama, "
                          "llama.cpp server), e.g. http://localhost:8000/v1")
PriceOpt = typer.Option(None, "--price", help="MODEL=IN/OUT: the model's price in dollars per million input/output "
                        "tokens (repeatable); needed for a dollar budget on a model without a known price.")
BackendOpt = typer.Option("asyncio", "--backend", help="Where examples are evaluated: asyncio (this process) or ray "
                          "(Ray workers; pip install 'flowbot[ray]').")
RayAddressOpt = typer.Option(None, "--ray-address", help="The Ray cluster for --backend ray (default: $RAY_ADDRESS, "
                             "else a local Ray).")
WorkersOpt = typer.Option(None, "--workers", help="Ray worker actors (default: one per CPU of the cluster).")
SandboxOpt = typer.Option("auto", "--sandbox", help="Isolation of LLM-written code: auto (the strongest this host "
                          "has), strict (refuse to run code without a kernel boundary: namespaces or bwrap), "
                          "namespaces, bwrap or process.")


def _version(value: bool) -> None:
    if value:
        out.print(f"flowbot {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                               help="Show the version and exit.")) -> None:
    """FlowBot command line."""


# -- run / show ----------------------------------------------------------------------------------
@app.command()
@handled
def run(
    workflow: Path = typer.Argument(..., help="A workflow JSON file."),
    input: str = typer.Option(..., "--input", "-i", help="The input fields as JSON, e.g. '{\"question\": \"...\"}', "
                              "or @file.json."),
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    trace: bool = typer.Option(False, "--trace", help="Also print every node's inputs, output, cost and time."),
    sandbox: str = SandboxOpt,
) -> None:
    """Run a workflow on one input and print its output fields."""
    from flowbot.runtime.runnable import RunnableWorkflow

    _sandbox_policy(sandbox)
    values = _json_arg(input, "--input")
    wf = RunnableWorkflow.load(workflow, model=model, base_url=base_url)
    missing = [f for f in wf.sketch.inputs if f not in values]
    if missing:
        raise FlowBotError(f"missing field(s) {', '.join(map(repr, missing))}; {workflow} reads "
                           f"{', '.join(wf.sketch.inputs)}", where="--input")
    outputs, tr = wf(values, trace=True)
    out.print_json(json.dumps(outputs, ensure_ascii=False, default=str))
    if trace:
        from flowbot.report.trace_view import print_trace

        print_trace(tr, out)
    if tr.error:
        err.print(f"[yellow]warning:[/] {tr.error}")


@app.command()
@handled
def show(
    workflow: Path = typer.Argument(..., help="A workflow JSON file."),
    format: str = typer.Option("text", "--format", "-f", help="text, mermaid or json"),
) -> None:
    """Print a workflow as text, as a Mermaid diagram, or as normalized JSON."""
    from flowbot.graph.io import load_workflow, workflow_to_json
    from flowbot.graph.render import to_mermaid, to_text
    from flowbot.tools import default_registry

    wf = load_workflow(workflow, known_tools=default_registry().signatures())
    renderers = {"text": to_text, "mermaid": to_mermaid, "json": workflow_to_json}
    if format not in renderers:
        raise typer.BadParameter(f"unknown format {format!r}; use text, mermaid or json")
    print(renderers[format](wf))


# -- tasks from options --------------------------------------------------------------------------
def _task_from_options(task: str | None, task_file: Path | None, data: Path | None, val: Path | None,
                       test: Path | None, inputs: list[str] | None, targets: list[str] | None, metric: str | None,
                       labels: str | None, data_dir: Path | None, split_seed: int = 0) -> Any:
    from flowbot.api import get_task
    from flowbot.tasks.task import Task

    chosen = [x for x in (task, task_file, data) if x]
    if len(chosen) != 1:
        raise typer.BadParameter("give exactly one of --task NAME, --task-file FILE or --data FILE")
    if task_file:
        return Task.from_file(task_file)
    if task:
        return get_task(task, data_dir)
    if not inputs or not targets:
        raise typer.BadParameter("--data needs --input FIELD (repeatable) and --target FIELD")
    label_list = [x.strip() for x in labels.split(",")] if labels else None
    return Task(Path(data).stem, data=str(data), val=str(val) if val else None, test=str(test) if test else None,
                inputs=inputs, targets=targets, metric=metric or "exact_match", labels=label_list, seed=split_seed)


# -- eval ----------------------------------------------------------------------------------------
@app.command("eval")
@handled
def eval_cmd(
    task: Optional[str] = typer.Option(None, "--task", "-t", help="A benchmark (gsm8k, math, hotpotqa, drop, fever, "
                                       "triviaqa, humaneval, mbpp) or a task file."),
    workflow: Optional[list[str]] = typer.Option(None, "--workflow", "-w", help="Baseline name (io, cot, sc, react) "
                                                 "or a workflow file; repeat to compare several side by side "
                                                 "(default: cot, or the run's best.json with --run-dir)."),
    split: str = typer.Option("test", "--split", help="train, val or test"),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Only the first N examples of the split."),
    concurrency: int = typer.Option(D.CONCURRENCY, "--concurrency", "-c"),
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the JSON result "
                                            "(default: eval-<task>-<split>.json)."),
    task_file: Optional[Path] = typer.Option(None, "--task-file", help="A task described in YAML/TOML."),
    data: Optional[Path] = typer.Option(None, "--data", help="Your own data (JSONL/JSON/CSV/Parquet)."),
    val: Optional[Path] = typer.Option(None, "--val"),
    test: Optional[Path] = typer.Option(None, "--test"),
    input_fields: Optional[list[str]] = typer.Option(None, "--input", help="An input field of --data (repeatable)."),
    target: Optional[list[str]] = typer.Option(None, "--target", help="The target field of --data."),
    metric: Optional[str] = typer.Option(None, "--metric", help="exact_match, f1, numeric, contains, label, pass_at_1, "
                                         "module:function or file.py:function"),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels for --metric label."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Benchmark data root (default: "
                                            "$FLOWBOT_DATA_DIR, the bundled GSM8K sample, or Hugging Face)."),
    no_traces: bool = typer.Option(False, "--no-traces", help="Leave traces out of the JSON result."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="The response cache file to read and fill "
                                         "(default: the user cache, or $FLOWBOT_CACHE)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Reuse an optimization run: its cache (re-scoring "
                                           "its workflows pays nothing already paid), and by default its best.json, "
                                           "task, model and seed."),
    price: Optional[list[str]] = PriceOpt,
    backend: str = BackendOpt,
    ray_address: Optional[str] = RayAddressOpt,
    workers: Optional[int] = WorkersOpt,
    sandbox: str = SandboxOpt,
) -> None:
    """Evaluate one or more workflows on a task split; prints a table and writes JSON."""
    from flowbot.api import aevaluate
    from flowbot.runtime.backends import make_backend

    _check_options({"--limit": (limit, 1), "--concurrency": (concurrency, 1), "--workers": (workers, 1)})
    _sandbox_policy(sandbox)
    cache_path = _eval_cache(cache, run_dir)
    run_settings = _run_settings(run_dir) if run_dir is not None else {}
    if run_settings:  # what the run used, unless given: the same requests hit its cache
        if not (task or task_file or data) and run_settings.get("task") in _benchmark_names():
            task = run_settings["task"]
        if model is None and base_url is None and run_settings.get("model") not in (None, "(default)"):
            model, base_url = run_settings["model"], run_settings.get("base_url")
        if not workflow and (run_dir / "best.json").is_file():  # type: ignore[operator]
            workflow = [str(run_dir / "best.json")]  # type: ignore[operator]
    the_task = _task_from_options(task, task_file, data, val, test, input_fields, target, metric, labels, data_dir)
    _note_default_model(model)
    seed = int((run_settings.get("optimize") or {}).get("seed", 0) or 0)
    the_backend = make_backend(backend, address=ray_address, workers=workers)
    results = []
    for wf in workflow or [D.SEED_WORKFLOW]:
        results.append(asyncio.run(aevaluate(wf, the_task, split=split, limit=limit, model=model, base_url=base_url,
                                             concurrency=concurrency, progress=True, seed=seed,
                                             cache=True if cache_path is None else cache_path,
                                             backend=the_backend, prices=_prices(price))))
    table = Table(title=f"{the_task.name} / {split}")
    for col in ("workflow", "score", "examples", "calls", "tokens", "dollars", "wall s"):
        table.add_column(col, justify="right" if col != "workflow" else "left")
    for r in results:
        table.add_row(r.workflow, f"{r.score:.3f} ± {r.stderr:.3f}", str(r.n), str(r.calls), f"{r.tokens:,}",
                      "—" if r.cost_usd is None else f"${r.cost_usd:.4f}", f"{r.wall_s:.1f}")
    out.print(table)
    for r in results:
        for warning in r.warnings:
            err.print(Text.assemble(("warning: ", "bold yellow"), f"{r.workflow}: {warning}"), highlight=False)
    path = out_path or Path(f"eval-{the_task.name}-{split}.json")
    payload = {"flowbot_version": __version__, "task": the_task.name, "split": split, "limit": limit,
               "command": " ".join(["flowbot", *sys.argv[1:]]),
               "results": [r.to_dict(traces=not no_traces) for r in results]}
    from flowbot.optim.rundir import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=1, ensure_ascii=False, default=str))
    out.print(f"wrote {path}")


def _run_settings(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def _benchmark_names() -> set[str]:
    from flowbot.tasks.benchmarks import BENCHMARKS

    return set(BENCHMARKS)


def _prices(options: list[str] | None) -> dict[str, str] | None:
    """``--price MODEL=IN/OUT`` options as the API's ``prices`` (checked there)."""
    if not options:
        return None
    from flowbot.lm.pricing import parse_price

    out = {}
    for text in options:
        model, _ = parse_price(text)  # a bad option fails here, with its text
        out[model] = text.rpartition("=")[2]
    return out


def _command_line() -> str:
    """This invocation as a shell line (recorded in config.json so ``flowbot runs`` can print it)."""
    return shlex.join(["flowbot", *sys.argv[1:]])


def _eval_cache(cache: Path | None, run_dir: Path | None) -> Path | None:
    if cache is not None and run_dir is not None:
        raise typer.BadParameter("give --cache or --run-dir, not both")
    if run_dir is None:
        return cache
    if not (run_dir / "config.json").is_file():
        from flowbot.optim.rundir import RunDirError

        raise RunDirError(f"--run-dir {run_dir}: not a run directory (no config.json)")
    return run_dir / "cache.sqlite"


# -- optimize ------------------------------------------------------------------------------------
@app.command()
@handled
def optimize(
    task: Optional[str] = typer.Option(None, "--task", "-t", help="A benchmark name or a task file."),
    seed_workflow: str = typer.Option(D.SEED_WORKFLOW, "--from", help="Seed workflow: io, cot, sc, react or a "
                                      "workflow file."),
    model: Optional[str] = ModelOpt,
    optimizer_model: Optional[str] = typer.Option(None, "--optimizer-model", help="The model that writes "
                                                  "losses, gradients, prompts and edits (default: --model)."),
    base_url: Optional[str] = BaseUrlOpt,
    optimizer_base_url: Optional[str] = typer.Option(None, "--optimizer-base-url"),
    budget_usd: Optional[float] = typer.Option(None, "--budget-usd", help="Dollar cap over all roles."),
    budget_calls: Optional[int] = typer.Option(None, "--budget-calls", help="Cap on paid LM calls over all roles."),
    budget_tokens: Optional[int] = typer.Option(None, "--budget-tokens"),
    budget_seconds: Optional[float] = typer.Option(None, "--budget-seconds", help="Wall-time cap."),
    objective: str = typer.Option(D.OBJECTIVE, "--objective", help="score, or cost (score minus --cost-weight × cost "
                                  "per example)"),
    cost_weight: float = typer.Option(D.COST_WEIGHT, "--cost-weight", help="Per dollar per example (or per 1k "
                                      "tokens for free local models)."),
    inner_only: bool = typer.Option(False, "--inner-only", help="Prompt-only ablation: no structural search."),
    method: str = typer.Option(D.METHOD, "--method", help="flowbot, inner-only or aflow (the AFlow-style baseline)"),
    feedback: str = typer.Option(D.FEEDBACK, "--feedback", help="backward (layer by layer) or global (ablation)"),
    steps: int = typer.Option(D.INNER_STEPS, "--steps", help="Inner-loop steps (minibatches) per tuned workflow."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help=f"Structural candidates tried (default "
                                         f"{D.OUTER_ROUNDS}; with --method aflow, {D.AFLOW_ROUNDS})."),
    minibatch: int = typer.Option(D.MINIBATCH_SIZE, "--minibatch", help="Minibatch size."),
    candidates: int = typer.Option(D.CANDIDATES, "--candidates", help="Instruction rewrites proposed per node "
                                   "and step."),
    step: str = typer.Option(D.STEP, "--step", help="How a blamed node's instruction changes: rewrite (the "
                             "paper's step: the optimizer rewrites it whole) or rule (it adds one general rule "
                             "to it; sturdier with small optimizer models)."),
    specificity_guard: bool = typer.Option(
        D.SPECIFICITY_GUARD, "--specificity-guard/--no-specificity-guard", help="Drop, before paying for it, an "
        "instruction change that names things of the minibatch's examples."),
    demos: int = typer.Option(D.DEMOS, "--demos", help="Few-shot demos to try per node (0 = off)."),
    demo_sets: int = typer.Option(D.DEMO_SETS, "--demo-sets", help="Demo sets raced per node and tuning, each of "
                                  "solved training examples the node was not shown before (1: one set, only for "
                                  "a node without demos)."),
    demo_bootstrap: int = typer.Option(D.DEMO_BOOTSTRAP, "--demo-bootstrap", help="Training examples a tuning "
                                       "may run, beyond its minibatches, to fill a demo set up to --demos before "
                                       "racing it (0: a set holds only what the minibatches solved)."),
    demo_teacher: str = typer.Option(D.DEMO_TEACHER, "--demo-teacher", help="Whose solved runs become demos: "
                                     "task (the task model's own) or optimizer (a teacher: the optimizer model "
                                     "solves the minibatch's failed examples, then up to --demo-bootstrap more)."),
    proposal: str = typer.Option(D.PROPOSAL, "--proposal", help="llm (the optimizer critiques the structure and "
                                 "picks an edit) or fixed (ablation: a fixed order over the operator menu)."),
    schedule: str = typer.Option(D.SCHEDULE, "--schedule", help="tune-first (tune the seed, then "
                                 "each structure that wins) or alternate (the paper's order: each round "
                                           "one structural step, then an inner step on the incumbent)."),
    budget_scope: str = typer.Option(D.BUDGET_SCOPE, "--budget-scope", help="all: the budget caps everything, the test "
                                     "evaluation is reserved from it; search: it caps the search only and the "
                                     "test is paid and reported apart."),
    margin: int = typer.Option(D.MARGIN, "--margin", help="Racing: wins minus losses a candidate needs "
                               "against the incumbent."),
    alpha: float = typer.Option(D.ALPHA, "--alpha", help="Racing: one-sided sign-test level."),
    train_size: int = typer.Option(D.TRAIN_SIZE, "--train-size"),
    val_size: int = typer.Option(D.VAL_SIZE, "--val-size"),
    test_size: Optional[int] = typer.Option(None, "--test-size", help="Only the first N test examples (default: "
                                            "all; 0 only with --no-test)."),
    concurrency: int = typer.Option(D.CONCURRENCY, "--concurrency", "-c"),
    random_seed: int = typer.Option(D.RANDOM_SEED, "--seed"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Default: runs/<task>-<method>-<settings hash>; "
                                           "re-running the same command resumes it."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the projected calls, tokens and dollars; pay nothing."),
    no_test: bool = typer.Option(False, "--no-test", help="Skip the final test evaluation."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html into the run directory."),
    task_file: Optional[Path] = typer.Option(None, "--task-file"),
    data: Optional[Path] = typer.Option(None, "--data", help="Training data of your own task."),
    val: Optional[Path] = typer.Option(None, "--val"),
    test: Optional[Path] = typer.Option(None, "--test"),
    input_fields: Optional[list[str]] = typer.Option(None, "--input"),
    target: Optional[list[str]] = typer.Option(None, "--target"),
    metric: Optional[str] = typer.Option(None, "--metric"),
    labels: Optional[str] = typer.Option(None, "--labels"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    price: Optional[list[str]] = PriceOpt,
    backend: str = BackendOpt,
    ray_address: Optional[str] = RayAddressOpt,
    workers: Optional[int] = WorkersOpt,
    mlflow: Optional[bool] = typer.Option(None, "--mlflow/--no-mlflow", help="Log params, metrics, artifacts and "
                                          "node traces to MLflow (default: on when $MLFLOW_TRACKING_URI is set and "
                                          "mlflow is installed)."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="The MLflow tracking URI (implies --mlflow), "
                                             "e.g. sqlite:///mlflow.db or http://localhost:5000"),
    sandbox: str = SandboxOpt,
) -> None:
    """Optimize a workflow's structure and prompts for a task within a budget (resumable)."""
    options = dict(locals())  # the options as given, by parameter name (see optimize_settings)
    from flowbot.api import prepare_run
    from flowbot.cli.progress import RunPrinter

    _check_options({"--budget-usd": (budget_usd, 0.0), "--budget-calls": (budget_calls, 1),
                    "--budget-tokens": (budget_tokens, 1), "--budget-seconds": (budget_seconds, 0.0),
                    "--cost-weight": (cost_weight, 0), "--steps": (steps, 0), "--rounds": (rounds, 0),
                    "--minibatch": (minibatch, 1), "--candidates": (candidates, 1), "--demos": (demos, 0),
                    "--demo-sets": (demo_sets, 1), "--demo-bootstrap": (demo_bootstrap, 0),
                    "--train-size": (train_size, 1), "--val-size": (val_size, 1),
                    "--test-size": (test_size, 0 if no_test else 1),  # 0 test items: only without a test
                    "--concurrency": (concurrency, 1), "--margin": (margin, 1), "--workers": (workers, 1)},
                   maxima={"--alpha": (alpha, 0.0, 1.0)},
                   choices={"--feedback": (feedback, ("backward", "global")), "--step": (step, ("rule", "rewrite")),
                            "--demo-teacher": (demo_teacher, ("task", "optimizer")),
                            "--method": (method, ("flowbot", "inner-only", "aflow")),
                            "--objective": (objective, ("score", "cost"))})
    _sandbox_policy(sandbox)
    the_task = _task_from_options(task, task_file, data, val, test, input_fields, target, metric, labels, data_dir)
    budget = {k: v for k, v in {"max_usd": budget_usd, "max_calls": budget_calls, "max_tokens": budget_tokens,
                                "max_seconds": budget_seconds}.items() if v is not None}
    from flowbot.runtime.backends import make_backend

    the_backend = make_backend(backend, address=ray_address, workers=workers)
    prepared = prepare_run(
        the_task, seed=seed_workflow, model=model, optimizer_model=optimizer_model, base_url=base_url,
        optimizer_base_url=optimizer_base_url, budget=budget or None, run_dir=run_dir, data_dir=data_dir,
        prices=_prices(price), backend=the_backend,
        mlflow=mlflow_uri if mlflow_uri and mlflow is not False else mlflow,
        **optimize_settings(options),
    )
    _note_default_model(model)
    estimate = prepared.estimate()
    printer = RunPrinter(out)
    printer.print_estimate(estimate, the_task, prepared)
    if estimate.refusal and not (prepared.run_dir / "config.json").exists():
        raise FlowBotError(estimate.refusal)
    if dry_run:
        return
    out.print(f"run directory: {prepared.run_dir}  (create {prepared.run_dir / 'STOP'} or press Ctrl-C to stop; "
              "re-run the same command to resume)")
    try:
        result = asyncio.run(prepared.arun([printer.on_event], command=_command_line()))
    except KeyboardInterrupt:
        err.print(f"\n[yellow]interrupted.[/] Everything paid for is kept in {prepared.run_dir}; "
                  "re-run the same command to resume.")
        raise typer.Exit(130) from None
    printer.print_result(result)
    if report:
        from flowbot.report.html import write_report

        path = write_report(prepared.run_dir)
        out.print(f"report: {path}")


def optimize_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The optimizer settings (:func:`flowbot.api.run_config`'s arguments) of ``flowbot optimize``'s
    options, by parameter name: one mapping for the command and for ``flowbot runs``, which checks
    with it that a run's resume command still makes the run's settings."""
    seed = options["random_seed"]
    return dict(
        method="inner-only" if options["inner_only"] else options["method"], objective=options["objective"],
        cost_weight=options["cost_weight"], train_size=options["train_size"], val_size=options["val_size"],
        test_size=options["test_size"], concurrency=options["concurrency"], random_seed=seed,
        evaluate_test=not options["no_test"], progress=True, budget_scope=options["budget_scope"],
        inner=_given(steps=options["steps"], minibatch_size=options["minibatch"], candidates=options["candidates"],
                     feedback=options["feedback"], demos=options["demos"], demo_sets=options["demo_sets"],
                     demo_bootstrap=options["demo_bootstrap"], demo_teacher=options["demo_teacher"],
                     step=options["step"],
                     specificity_guard=options["specificity_guard"], seed=seed),
        outer=_given(rounds=options["rounds"], proposal=options["proposal"], schedule=options["schedule"]),
        aflow=_given(rounds=options["rounds"], seed=seed),
        racing=_given(margin=options["margin"], alpha=options["alpha"], seed=seed),
    )


def command_settings(command: str) -> dict[str, Any] | None:
    """The optimizer settings (as saved in a run's settings) that a ``flowbot optimize`` command line
    makes with this version, or None for another command; a ValueError names an option that no
    longer parses. ``flowbot runs`` hands it to :func:`flowbot.report.runs.list_runs`, which checks
    with it that a run's resume command still makes the run's settings."""
    from flowbot.api import run_config

    args = shlex.split(command.split(" && ", 1)[-1])
    if args[:2] != ["flowbot", "optimize"]:
        return None
    try:
        with _optimize_command().make_context("optimize", args[2:]) as ctx:  # parses; runs nothing
            options = dict(ctx.params)
    except Exception as exc:  # click's usage errors (typer may bundle its own click)
        if not hasattr(exc, "format_message"):
            raise
        raise ValueError(f"its command line does not parse: {exc.format_message()}") from None
    return json.loads(json.dumps(run_config(**optimize_settings(options)).to_dict(), default=str))


@functools.lru_cache(maxsize=1)
def _optimize_command() -> Any:
    return typer.main.get_command(app).commands["optimize"]  # type: ignore[attr-defined]


def _given(**options: Any) -> dict[str, Any]:
    """The options that have a value (``--rounds`` has none unless given: it sets the outer loop's
    and the AFlow search's, whose defaults differ in general)."""
    return {k: v for k, v in options.items() if v is not None}


def _note_default_model(model: str | None) -> None:
    from flowbot.lm.resolve import EMBEDDED_DEFAULT, default_model

    if model is None and default_model() == EMBEDDED_DEFAULT:
        err.print(f"[dim]No --model and no provider key in the environment: using the embedded {EMBEDDED_DEFAULT} "
                  "(fetched once, about 1.1 GB, on first use).[/]")


# -- report / export / listings ------------------------------------------------------------------
@app.command()
@handled
def report(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """Write report.html (scores and cost over the run, Pareto front, workflow pictures, prompt diffs)."""
    from flowbot.report.html import write_report

    out.print(f"wrote {write_report(run_dir)}")


@app.command()
@handled
def runs(
    directory: Path = typer.Argument(Path("runs"), help="Where to look for run directories (e.g. runs/ or "
                                     "results/gsm8k); a run directory itself also works."),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List past runs: task, models, seed/best validation and test scores, spend, status, how to resume."""
    from flowbot.report.runs import list_runs

    found = list_runs(directory, command_settings=command_settings)
    if as_json:
        print(json.dumps([r.to_dict() for r in found], indent=1, default=str))
        return
    if not found:
        out.print(f"no run directories under {directory}")
        return
    table = Table(title=f"runs under {directory}")
    for col in ("#", "run", "task", "method", "models (task / optimizer)", "val seed → best", "test seed → best",
                "spend", "status"):
        table.add_column(col, justify="right" if col == "#" else "left", overflow="fold")
    for i, r in enumerate(found, 1):
        models = r.task_model if r.optimizer_model == r.task_model else f"{r.task_model} / {r.optimizer_model}"
        spend = f"{r.calls:,} calls, {r.tokens:,} tok" + ("" if not r.usd else f", ${r.usd:.4f}")
        table.add_row(str(i), str(r.path), r.task, r.method, models, _pair(r.seed_val, r.best_val, r.best_id),
                      _pair(r.seed_test, r.test, None), spend, r.status)
    (out if out.is_terminal else Console(soft_wrap=True, width=220)).print(table)  # piped: one line per run
    for i, r in enumerate(found, 1):
        if r.stopped:
            out.print(f"[dim]#{i} stopped:[/] {r.stopped}", highlight=False)
        if r.status == "running":
            out.print(f"[dim]#{i}[/] running: {r.holder or 'in use'}", highlight=False)
        elif r.not_resumable:
            out.print(f"[dim]#{i}[/] {escape(r.not_resumable)}", highlight=False)
        elif r.command:
            note = " [dim](rebuilt from its settings)[/]" if r.command_rebuilt else ""
            out.print(f"[dim]#{i} resume:[/] {r.command}{note}", highlight=False, markup=True)
        else:
            out.print(f"[dim]#{i} resume:[/] started from Python: call flowbot.optimize(..., run_dir={str(r.path)!r}) "
                      "with the same arguments")


def _pair(a: float | None, b: float | None, best_id: str | None) -> str:
    def f(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"
    return f"{f(a)} → {f(b)}" + (f" ({best_id})" if best_id else "")


@app.command()
@handled
def export(
    workflow: Path = typer.Argument(..., help="A workflow JSON file (e.g. a run's best.json)."),
    python: Path = typer.Option(..., "--python", help="The Python module to write."),
) -> None:
    """Write a small standalone Python module that runs the workflow with the installed flowbot."""
    from flowbot.report.export import export_python

    out.print(f"wrote {export_python(workflow, python)}")


@app.command()
def tasks() -> None:
    """List the built-in benchmarks and their split protocols."""
    from flowbot.tasks.benchmarks import BENCHMARKS

    table = Table("task", "inputs → target", "metric", "splits")
    for b in BENCHMARKS.values():
        table.add_row(b.name, f"{', '.join(b.inputs)} → {b.output or b.targets[0]}", b.metric, b.protocol)
    out.print(table)


@app.command()
def metrics() -> None:
    """List the built-in metrics."""
    from flowbot.tasks.metric_specs import metric_names

    table = Table("metric", "what it measures")
    for name, text in metric_names().items():
        table.add_row(name, text)
    out.print(table)


def _check_options(minima: dict[str, tuple[Any, float]],
                   choices: dict[str, tuple[str, tuple[str, ...]]] | None = None,
                   maxima: dict[str, tuple[Any, float, float]] | None = None) -> None:
    """One line naming the option for a value out of range (a float minimum means "more than";
    ``maxima`` are (value, more than, at most) ranges) or not among the choices, before anything runs."""
    for option, (value, low) in minima.items():
        if value is None:
            continue
        if isinstance(low, float) and not value > low:
            raise FlowBotError(f"must be more than {low:g}, got {value:g}", where=option)
        if value < low:
            raise FlowBotError(f"must be at least {low}, got {value}", where=option)
    for option, (value, above, most) in (maxima or {}).items():
        if value is not None and not above < value <= most:
            raise FlowBotError(f"must be more than {above:g} and at most {most:g}, got {value:g}", where=option)
    for option, (value, allowed) in (choices or {}).items():
        if value is not None and value not in allowed:
            raise FlowBotError(f"unknown value {value!r}; use {', '.join(allowed)}", where=option)


def _sandbox_policy(value: str) -> None:
    """Make ``--sandbox`` the policy of every sandboxed run in this process (tools and metrics);
    a level this host lacks, or ``strict`` on a host without a kernel boundary, fails here,
    before anything runs."""
    import os

    from flowbot.tools.sandbox import LEVELS, POLICY_ENV, no_boundary_warning, sandbox_levels

    _check_options({}, choices={"--sandbox": (value, ("auto", "strict", *LEVELS))})
    if value == "auto":  # (a $FLOWBOT_SANDBOX already set stays in force)
        if os.environ.get(POLICY_ENV, "").strip().lower() == "process":
            _say_no_boundary(asyncio.run(no_boundary_warning(f"${POLICY_ENV}=process")))
        return
    os.environ[POLICY_ENV] = value
    if value == "process":  # chosen on purpose, and still no boundary: said before anything runs
        _say_no_boundary(asyncio.run(no_boundary_warning("--sandbox process")))
        return
    missing = asyncio.run(sandbox_levels())  # level -> why it is unavailable ("" when it works)
    wanted = ("namespaces", "bwrap") if value == "strict" else (value,)
    if all(missing[level] for level in wanted):
        why = "; ".join(f"{level}: {missing[level]}" for level in wanted)
        raise FlowBotError(f"this host cannot isolate generated code that way ({why})", where=f"--sandbox {value}")


def _say_no_boundary(text: str | None) -> None:
    if text:
        err.print(Text.assemble(("warning: ", "bold yellow"), text.removeprefix("sandbox: ")), highlight=False)


def _json_arg(text: str, option: str) -> dict[str, Any]:
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.exists():
            raise typer.BadParameter(f"{path}: no such file", param_hint=option)
        text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON ({exc.msg} at column {exc.colno})", param_hint=option) from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object of field values", param_hint=option)
    return value


def _mount_models() -> None:
    from flowbot.cli.models import app as models_app

    app.add_typer(models_app, name="models")


_mount_models()


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

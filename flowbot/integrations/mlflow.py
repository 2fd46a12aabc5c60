"""MLflow tracking and tracing for optimization runs (``--mlflow``; ``pip install 'flowbot[mlflow]'``).

A run logs, into one MLflow run named after its run directory:

- its settings as **params** (flattened: ``optimize.inner.steps`` ...);
- validation and test scores and spend per role as **metrics**, with the paid LM calls so far
  (all roles) as the step, so every curve shares one x axis;
- ``best.json``, ``summary.json``, ``report.html``, ``config.json`` and ``events.jsonl`` as
  **artifacts** when it ends;
- every workflow run as a **trace** with one span per node (inputs, output, model, tokens, cost,
  latency), through MLflow's tracing API.

Turned on by ``--mlflow`` / ``mlflow=True`` (MLflow's own tracking URI: ``MLFLOW_TRACKING_URI``,
or its default), ``--mlflow-uri URI`` / ``mlflow="sqlite:///mlflow.db"``, or by
``MLFLOW_TRACKING_URI`` being set while mlflow is installed. The experiment is
``$MLFLOW_EXPERIMENT_NAME`` or ``flowbot``. A resumed run continues its MLflow run (kept in
``mlflow.json`` in the run directory) and logs only what is new.

The adapter reads the run's events and files; the only hook in the engine is the executor's
tracer (:mod:`flowbot.runtime.tracing`). A failure to log warns and never stops the run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from flowbot.errors import FlowBotError
from flowbot.optim.events import CandidateEvaluated, LoggedEvent, RunFinished, SeedEvaluated, TestEvaluated, read_event
from flowbot.optim.rundir import atomic_write_text
from flowbot.runtime.tracing import use_tracer
from flowbot.version import __version__

MISSING_EXTRA = "MLflow logging needs mlflow: pip install 'flowbot[mlflow]'"
STATE_FILE = "mlflow.json"
DEFAULT_EXPERIMENT = "flowbot"
#: MLflow span types by FlowBot node kind
SPAN_TYPES = {"workflow": "CHAIN", "llm": "LLM", "tool": "TOOL", "branch": "CHAIN", "merge": "CHAIN"}
ARTIFACTS = ("best.json", "summary.json", "report.html", "config.json", "events.jsonl")
PARAM_CHARS = 500  # MLflow caps a param value; longer settings are cut (the full text is in config.json)


class MlflowSetupError(FlowBotError):
    """MLflow was asked for but cannot be used (not installed)."""


def mlflow_enabled(setting: bool | str | None) -> bool:
    """``False``: off. ``True`` or a URI: on (mlflow must be installed). ``None``: on when
    ``MLFLOW_TRACKING_URI`` is set and mlflow is installed."""
    installed = importlib.util.find_spec("mlflow") is not None
    if setting is None:
        return bool(os.environ.get("MLFLOW_TRACKING_URI")) and installed
    if setting is False:
        return False
    if not installed:
        raise MlflowSetupError(MISSING_EXTRA)
    return True


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as dotted MLflow params (values as text, cut to what MLflow accepts)."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:PARAM_CHARS]
    return out


# -- tracing ----------------------------------------------------------------------------------
class MlflowSpan:
    def __init__(self, client: Any, trace_id: str, span_id: str, root: bool) -> None:
        self.client, self.trace_id, self.span_id, self.root = client, trace_id, span_id, root

    def end(self, outputs: Any = None, attributes: Mapping[str, Any] | None = None, error: str | None = None) -> None:
        attrs = _jsonable(dict(attributes or {}))
        if error:
            attrs["error"] = error
        status = "ERROR" if error else "OK"
        if self.root:
            self.client.end_trace(self.trace_id, outputs=_jsonable(outputs), attributes=attrs, status=status)
        else:
            self.client.end_span(self.trace_id, self.span_id, outputs=_jsonable(outputs), attributes=attrs,
                                 status=status)


class MlflowTracer:
    """A :class:`flowbot.runtime.tracing.Tracer`: a trace per workflow run, a span per node, in
    ``experiment_id`` and linked to the MLflow run ``run_id``. Spans are addressed by id, never by
    MLflow's "current span", because many workflow runs are in flight at once."""

    def __init__(self, client: Any, experiment_id: str, run_id: str | None) -> None:
        self.client, self.experiment_id, self.run_id = client, experiment_id, run_id

    def start_span(self, name: str, kind: str, inputs: Mapping[str, Any], parent: MlflowSpan | None = None,
                   attributes: Mapping[str, Any] | None = None) -> MlflowSpan:
        attrs = _jsonable({"flowbot.kind": kind, **dict(attributes or {})})
        span_type = SPAN_TYPES.get(kind, "UNKNOWN")
        if parent is None:
            span = self.client.start_trace(name, span_type=span_type, inputs=_jsonable(dict(inputs)), attributes=attrs,
                                           experiment_id=self.experiment_id, run_id=self.run_id)
            return MlflowSpan(self.client, span.trace_id, span.span_id, root=True)
        span = self.client.start_span(name, trace_id=parent.trace_id, parent_id=parent.span_id, span_type=span_type,
                                      inputs=_jsonable(dict(inputs)), attributes=attrs)
        return MlflowSpan(self.client, parent.trace_id, span.span_id, root=False)


# -- the run ----------------------------------------------------------------------------------
class MlflowRun:
    """One FlowBot run mirrored into one MLflow run. Build it with :meth:`open`; feed it events
    with :meth:`on_event`; wrap the work in :meth:`tracing`; end it with :meth:`finish`."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, run_dir: Path, skip_replayed: bool,
                 restore_uri: tuple[str | None] | None) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.run_dir = run_dir
        self.skip_replayed = skip_replayed
        self.tracer = MlflowTracer(client, experiment_id, run_id)
        self._restore_uri = restore_uri
        self._best: float | None = None
        self._calls = 0
        self._last_spend: dict[str, Any] = {}
        self._warned = False

    @classmethod
    def open(cls, run_dir: str | Path, settings: Mapping[str, Any], *, tracking_uri: str | None = None,
             resumed: bool = False, experiment: str | None = None) -> "MlflowRun":
        """Start the MLflow run of ``run_dir`` (or continue it when the run is resumed against
        the same tracking URI) and log the settings as params."""
        try:
            import mlflow
            from mlflow import MlflowClient
        except ImportError:
            raise MlflowSetupError(MISSING_EXTRA) from None
        run_dir = Path(run_dir)
        previous = mlflow.get_tracking_uri()
        uri = tracking_uri or previous
        # MLflow exports traces to the process's tracking URI, whatever the client says: set it
        # for the run, and put the old setting back in finish() (None: there was none)
        restore: tuple[str | None] | None = None
        if uri != previous:
            restore = (previous if mlflow.tracking.is_tracking_uri_set() else None,)
            mlflow.set_tracking_uri(uri)
        client = MlflowClient(tracking_uri=uri)
        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
        state = _read_state(run_dir)
        run_id = state.get("run_id") if resumed and state.get("tracking_uri") == uri else None
        if run_id is not None and _run_exists(client, run_id):
            client.update_run(run_id, status="RUNNING")
            return cls(client, run_id, experiment_id, run_dir, skip_replayed=True, restore_uri=restore)
        run = client.create_run(experiment_id, run_name=run_dir.name, tags={
            "flowbot.version": __version__, "flowbot.run_dir": str(run_dir.resolve()),
            "flowbot.task": str(settings.get("task")), "flowbot.method": str(settings.get("method"))})
        self = cls(client, run.info.run_id, experiment_id, run_dir, skip_replayed=False, restore_uri=restore)
        self._log_params(settings)
        # like every rewritten file of the run directory: a temporary file renamed over the old one
        atomic_write_text(run_dir / STATE_FILE, json.dumps({"tracking_uri": uri, "run_id": self.run_id,
                                                            "experiment_id": experiment_id}, indent=2))
        return self

    def _log_params(self, settings: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten({k: v for k, v in settings.items() if k != "seed_workflow"})
        params = [Param(k, v) for k, v in sorted(flat.items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        with use_tracer(self.tracer):
            yield

    # -- events ------------------------------------------------------------------------------
    def on_event(self, event: dict[str, Any] | LoggedEvent) -> None:
        """A run event (the dict a callback gets, read with :func:`read_event`) → metrics. Unknown
        types are ignored."""
        rec = read_event(event)
        if rec.replayed and self.skip_replayed:
            return
        try:
            self._log_event(rec)
        except Exception as exc:  # a tracking server that is down must not stop the optimization
            if not self._warned:
                self._warned = True
                warnings.warn(f"MLflow logging failed ({type(exc).__name__}: {exc}); the run goes on",
                              RuntimeWarning, stacklevel=2)

    def _log_event(self, rec: LoggedEvent) -> None:
        from mlflow.entities import Metric

        usage = rec.usage_total
        if isinstance(usage, dict):
            self._calls = int(sum(_num(u.get("calls")) for u in usage.values() if isinstance(u, dict)))
        now = int(time.time() * 1000)
        values: dict[str, float] = {}
        e = rec.event
        if isinstance(e, SeedEvaluated) and e.val_score is not None:
            values["seed_val_score"] = _num(e.val_score)
        elif isinstance(e, CandidateEvaluated) and e.val_score is not None:
            score = _num(e.val_score)
            values["val_score"] = score
            self._best = score if self._best is None else max(self._best, score)
            values["best_val_score"] = self._best
            if e.cost_per_example is not None:
                values["cost_per_example"] = _num(e.cost_per_example)
            if e.tokens_per_example is not None:
                values["tokens_per_example"] = _num(e.tokens_per_example)
        elif isinstance(e, TestEvaluated) and e.score is not None:
            values["seed_test_score" if e.id == "seed" else "test_score"] = _num(e.score)
        elif isinstance(e, RunFinished):
            self.client.set_tag(self.run_id, "flowbot.stopped", str(e.stopped or "no"))
            if e.best:
                self.client.set_tag(self.run_id, "flowbot.best", str(e.best))
        if isinstance(usage, dict) and usage != self._last_spend:
            self._last_spend = usage
            for role, u in usage.items():
                if not isinstance(u, dict):
                    continue
                values[f"spend.{role}.calls"] = _num(u.get("calls"))
                values[f"spend.{role}.tokens"] = _num(u.get("prompt_tokens")) + _num(u.get("completion_tokens"))
                if u.get("cost_usd") is not None:
                    values[f"spend.{role}.usd"] = _num(u.get("cost_usd"))
        if values:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, self._calls) for k, v in values.items()])

    # -- the end -----------------------------------------------------------------------------
    def finish(self, status: str = "FINISHED") -> None:
        """Write the report, log the run's files as artifacts, flush the traces, end the run."""
        import mlflow

        try:
            if (self.run_dir / "events.jsonl").exists() or (self.run_dir / "summary.json").exists():
                from flowbot.report.html import write_report

                write_report(self.run_dir)
            for name in ARTIFACTS:
                if (self.run_dir / name).exists():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name))
            mlflow.flush_trace_async_logging()
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            warnings.warn(f"MLflow: could not close run {self.run_id} ({type(exc).__name__}: {exc})",
                          RuntimeWarning, stacklevel=2)
        finally:
            if self._restore_uri is not None:
                mlflow.set_tracking_uri(self._restore_uri[0])  # None also clears $MLFLOW_TRACKING_URI it set


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_exists(client: Any, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except Exception:
        return False
    return True

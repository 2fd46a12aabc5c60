"""``flowbot.RunnableWorkflow``: a workflow you can call (what :func:`flowbot.load` returns). The IR
(:class:`flowbot.graph.Workflow`) is plain data; this subclass adds running it with a model chosen
at load time or per call.

    >>> from flowbot.lm import LMClient
    >>> from flowbot.testing import ScriptedLM
    >>> from flowbot.tasks import build_baseline
    >>> wf = RunnableWorkflow.from_ir(build_baseline("cot", inputs=["question"], output="answer"))
    >>> wf.bind(lm=LMClient(ScriptedLM(default="Answer: 4")))(question="2+2?")
    {'answer': '4'}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from flowbot.errors import InputError
from flowbot.graph.io import load_workflow, save_workflow
from flowbot.graph.sketch import Workflow as IRWorkflow
from flowbot.lm.cache import ResponseCache
from flowbot.lm.client import LMClient
from flowbot.runtime.executor import Executor
from flowbot.runtime.models import ModelPool, default_cache_path
from flowbot.runtime.sync import run_sync
from flowbot.runtime.trace import Trace
from flowbot.tools.base import ToolRegistry


def _pool_for(model: str | None, base_url: str | None) -> ModelPool:
    path = default_cache_path()
    return ModelPool(model, base_url=base_url, cache=ResponseCache(path) if path else None)


def default_tools() -> ToolRegistry:
    from flowbot.tools import default_registry

    return default_registry()


class RunnableWorkflow(IRWorkflow):
    _lm: LMClient | None = PrivateAttr(default=None)
    _pool: ModelPool | None = PrivateAttr(default=None)
    _tools: ToolRegistry | None = PrivateAttr(default=None)

    @classmethod
    def from_ir(cls, workflow: IRWorkflow) -> "RunnableWorkflow":
        if isinstance(workflow, cls):
            return workflow
        return cls.model_validate(workflow.model_dump())

    @classmethod
    def load(cls, path: str | Path, *, model: str | None = None, base_url: str | None = None) -> "RunnableWorkflow":
        """Load a saved workflow (JSON); ``model``/``base_url`` bind the model it runs with."""
        tools = default_tools()
        wf = cls.from_ir(load_workflow(path, known_tools=tools.signatures()))
        wf._tools = tools
        return wf.bind(model, base_url=base_url) if (model or base_url) else wf

    def save(self, path: str | Path) -> Path:
        """Write plain JSON (graph, instructions, demos, tool and model settings, versions)."""
        return save_workflow(self, path)

    def bind(self, model: str | None = None, *, base_url: str | None = None, lm: LMClient | None = None,
             tools: ToolRegistry | None = None) -> "RunnableWorkflow":
        """Choose the model (a name, or a ready LM client) this workflow runs with by default."""
        if lm is not None:
            self._lm, self._pool = lm, None
        elif model is not None or base_url is not None:
            self._lm, self._pool = None, _pool_for(model, base_url)
        if tools is not None:
            self._tools = tools
        return self

    def _executor(self, model: str | None) -> Executor:
        pool: ModelPool | None
        if model is not None:
            pool = _pool_for(model, None)
            lm = pool.client()
        elif self._lm is not None:
            lm, pool = self._lm, None
        else:
            self._pool = pool = self._pool or _pool_for(None, None)
            lm = pool.client()
        if self._tools is None:
            self._tools = default_tools()
        return Executor(lm, tools=self._tools, models=pool.resolver() if pool else None)

    async def arun(self, inputs: dict[str, Any] | None = None, /, *, model: str | None = None,
                   trace: bool = False, **fields: Any) -> Any:
        """Run on one input; returns the output fields (and the :class:`Trace` with ``trace=True``).

        Inputs come as keyword arguments, or as a dict when a field is named ``model`` or ``trace``."""
        values = {**(inputs or {}), **fields}
        missing = [f for f in self.sketch.inputs if f not in values]
        if missing:
            raise InputError(f"missing input field(s) {', '.join(missing)}; this workflow reads "
                             f"{', '.join(self.sketch.inputs)}")
        result: Trace = await self._executor(model).run(self, values)
        return (result.outputs, result) if trace else result.outputs

    def __call__(self, inputs: dict[str, Any] | None = None, /, *, model: str | None = None,
                 trace: bool = False, **fields: Any) -> Any:
        """Synchronous :meth:`arun`; inside a running event loop (Jupyter) it runs on a private loop
        in a worker thread (``await workflow.arun(...)`` does not block the caller's loop)."""
        return run_sync(self.arun(inputs, model=model, trace=trace, **fields))


def __getattr__(name: str) -> Any:
    # modules written by `flowbot export` before the class was renamed import it as ``Workflow``
    # (the IR class is imported here as IRWorkflow, so that name is free for them)
    if name == "Workflow":
        return RunnableWorkflow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

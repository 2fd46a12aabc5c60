"""Node kinds of the workflow IR and the per-node parameters the inner loop tunes.

A workflow reads and writes named *fields*. Each node declares the fields it reads and the one it
writes; edges follow from that (one writer per field), so the graph is a DAG that can be checked,
drawn and walked backwards. Structure lives in the node (``Sketch``); everything the inner loop may
tune lives in :class:`NodeParams` (``Workflow = Sketch + params``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: how an llm node's raw reply becomes its field value (see flowbot.scoring.extract)
#: ``reasoning`` keeps the whole reply (a draft's full solution, for a verifier to read) while the
#: prompt still asks for the final line of rule ``OutputFormat.final``
ExtractRule = Literal["text", "answer", "boxed", "number", "label", "json", "code", "regex", "reasoning"]


def _check_name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} must be an identifier (letters, digits, underscore)")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class OutputFormat(_Model):
    """How the reply of an llm node is parsed into its output field."""

    extract: ExtractRule = "text"
    labels: list[str] | None = None  # for "label"
    pattern: str | None = None  # for "regex"
    description: str = ""  # shown to the model, e.g. "a single number"
    #: for "reasoning": the rule whose final-line request the prompt shows (default "answer")
    final: ExtractRule | None = None
    #: the field name the prompt shows for this output (default: the field written), so a renamed
    #: copy of a node (an ensemble sample, a fallback) sends its original's prompt byte for byte
    prompt_field: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_additions(self, handler: SerializerFunctionWrapHandler) -> Any:
        # fields added after files were shipped are left out while unset, so existing workflows
        # serialize (and hash, see Sketch.signature) exactly as before
        data = handler(self)
        if isinstance(data, dict):
            for key in ("final", "prompt_field"):
                if data.get(key) is None:
                    data.pop(key, None)
        return data

    @field_validator("prompt_field")
    @classmethod
    def _prompt_field_ok(cls, v: str | None) -> str | None:
        return v if v is None else _check_name(v, "prompt field")


class _NodeBase(_Model):
    id: str
    #: one line on the node's role in the workflow, shown to the optimizer and in pictures
    purpose: str = ""
    #: the one field this node writes
    writes: str

    @field_validator("id")
    @classmethod
    def _id_ok(cls, v: str) -> str:
        return _check_name(v, "node id")

    @field_validator("writes")
    @classmethod
    def _writes_ok(cls, v: str) -> str:
        return _check_name(v, "field")


class _ReadingNode(_NodeBase):
    #: the fields this node reads (edges follow from them)
    reads: list[str]

    @field_validator("reads")
    @classmethod
    def _reads_ok(cls, v: list[str]) -> list[str]:
        return [_check_name(f, "field") for f in v]


class LLMNode(_ReadingNode):
    kind: Literal["llm"] = "llm"
    output: OutputFormat = Field(default_factory=OutputFormat)


class ToolNode(_NodeBase):
    kind: Literal["tool"] = "tool"
    tool: str
    #: tool argument name -> field whose value is passed
    args: dict[str, str]

    @property
    def reads(self) -> list[str]:
        return list(dict.fromkeys(self.args.values()))


class BranchRule(_Model):
    """``label`` is chosen when ``field`` satisfies ``op`` (with ``value``). First match wins."""

    field: str
    op: Literal["contains", "equals", "regex", "nonempty", "empty", "gt", "lt"]
    value: str | float | None = None
    label: str


class BranchNode(_ReadingNode):
    """Routes to one successor. It writes the chosen label; ``routes[label]`` lists the nodes that
    run only when that label is chosen (nodes downstream of a skipped node are skipped too)."""

    kind: Literal["branch"] = "branch"
    mode: Literal["rule", "llm"] = "rule"
    rules: list[BranchRule] = Field(default_factory=list)
    routes: dict[str, list[str]]
    default: str


class MergeNode(_ReadingNode):
    """Combines several fields: majority vote, LLM selection, concatenation, or the first present."""

    kind: Literal["merge"] = "merge"
    strategy: Literal["majority", "select", "concat", "first"] = "majority"


Node = Annotated[Union[LLMNode, ToolNode, BranchNode, MergeNode], Field(discriminator="kind")]
NODE_KINDS = ("llm", "tool", "branch", "merge")


class Demo(_Model):
    """A few-shot example for an llm node: its input field values and the reply it should give."""

    inputs: dict[str, Any]
    output: str


class NodeParams(_Model):
    """Everything the inner loop may tune on one node."""

    instruction: str = ""
    demos: list[Demo] = Field(default_factory=list)
    #: a model name, or None for the workflow's task model
    model: str | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    #: added to the run's seed; ensemble copies get distinct offsets so their samples differ
    seed: int | None = None
    #: tools an llm node may call ReAct-style (``Action: tool[input]``) before answering
    tools: list[str] = Field(default_factory=list)
    max_tool_steps: int = 4
    #: tool settings (e.g. retrieval ``k``, python ``timeout_s``)
    config: dict[str, Any] = Field(default_factory=dict)

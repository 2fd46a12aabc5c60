"""The workflow IR: nodes, sketches, workflows, validation, structural edits, JSON and rendering.

Below are the names a user calls; the rest (the JSON form, edit parsing, node kinds) lives in the
modules: :mod:`.nodes`, :mod:`.sketch`, :mod:`.edits`, :mod:`.io`, :mod:`.render`."""

from flowbot.graph.edits import (
    AddBranch,
    AddNode,
    AddToolStep,
    EditError,
    Ensemble,
    InsertAfter,
    InsertVerifier,
    RemoveNode,
    ReplaceNode,
    Rewire,
    apply_edit,
)
from flowbot.graph.io import WorkflowFileError, load_workflow, save_workflow
from flowbot.graph.nodes import BranchNode, BranchRule, Demo, LLMNode, MergeNode, NodeParams, OutputFormat, ToolNode
from flowbot.graph.render import to_mermaid, to_text
from flowbot.graph.sketch import Sketch, Workflow, WorkflowValidationError, validate_sketch

__all__ = [
    "AddBranch", "AddNode", "AddToolStep", "BranchNode", "BranchRule", "Demo", "EditError", "Ensemble",
    "InsertAfter", "InsertVerifier", "LLMNode", "MergeNode", "NodeParams", "OutputFormat", "RemoveNode",
    "ReplaceNode", "Rewire", "Sketch", "ToolNode", "Workflow", "WorkflowFileError", "WorkflowValidationError",
    "apply_edit", "load_workflow", "save_workflow", "to_mermaid", "to_text", "validate_sketch",
]

"""The workflow IR: nodes, sketches, workflows, validation, structural edits, JSON and rendering."""

from flowbot.graph.edits import (
    EDIT_OPS,
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
    describe_edit,
    parse_edit,
)
from flowbot.graph.io import (
    IR_SCHEMA_VERSION,
    WorkflowFileError,
    load_workflow,
    save_workflow,
    workflow_from_dict,
    workflow_to_dict,
    workflow_to_json,
)
from flowbot.graph.nodes import (
    NODE_KINDS,
    BranchNode,
    BranchRule,
    Demo,
    LLMNode,
    MergeNode,
    Node,
    NodeParams,
    OutputFormat,
    ToolNode,
)
from flowbot.graph.render import to_mermaid, to_text
from flowbot.graph.sketch import Problem, Sketch, Workflow, WorkflowValidationError, validate_sketch

__all__ = [
    "EDIT_OPS", "IR_SCHEMA_VERSION", "NODE_KINDS", "AddBranch", "AddNode", "AddToolStep", "BranchNode",
    "BranchRule", "Demo", "EditError", "Ensemble", "InsertAfter", "InsertVerifier", "LLMNode", "MergeNode",
    "Node", "NodeParams", "OutputFormat", "Problem", "RemoveNode", "ReplaceNode", "Rewire", "Sketch",
    "ToolNode", "Workflow", "WorkflowFileError", "WorkflowValidationError", "apply_edit", "describe_edit",
    "load_workflow", "parse_edit", "save_workflow", "to_mermaid", "to_text", "validate_sketch",
    "workflow_from_dict", "workflow_to_dict", "workflow_to_json",
]

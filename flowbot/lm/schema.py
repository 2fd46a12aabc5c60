"""JSON schemas on requests: their canonical text, and the subset every provider can enforce.

A request's schema is stored as compact JSON text (:func:`schema_text`) so it is hashable and part
of the cache key. Key order is kept, not sorted: the embedded model's grammar generates an
object's properties in the order the schema lists them, so two schemas that differ only in key
order decode differently and are different requests.

**The enforceable subset.** The embedded model (llama.cpp) constrains decoding with a grammar that
llama-cpp-python 0.3.36 builds from the schema (``LlamaGrammar.from_json_schema``). Its converter
*silently ignores* every keyword it does not know, so a schema using one would decode partly
unconstrained. :func:`unsupported_parts` names every such part, and the embedded provider refuses
a schema that has one. Build schemas from this subset (it is also valid for OpenAI-compatible
servers and litellm):

* ``type``: ``object``, ``array``, ``string``, ``integer``, ``number``, ``boolean``, ``null``
  (one type per node; for "string or null" write ``anyOf`` — a list of types drops every other
  keyword of the node).
* ``enum`` and ``const`` (JSON values; strings without backslashes, quotes or control characters).
* ``anyOf`` / ``oneOf`` of subschemas (``oneOf`` is decoded as ``anyOf``: make the alternatives
  disjoint, e.g. by a ``const`` tag, or an output may match two and fail validation).
* objects: ``properties``, ``required`` (names listed in ``properties``), ``additionalProperties``
  (``false``, or a schema for the values of extra keys). Without ``additionalProperties`` the
  grammar allows no extra keys. **Properties are generated in order: the required ones in the
  order listed, then the optional ones** — put a short critique before the decision it informs.
* arrays: ``items`` (one schema) with ``minItems`` / ``maxItems``, or ``prefixItems`` (a tuple).
* strings: ``minLength`` / ``maxLength``, or ``format`` ``date``, ``time``, ``date-time``, ``uuid``.
* references: ``$ref`` to ``#/$defs/...`` (or ``#/definitions/...``) in the same schema.
* annotations, kept for the model's prompt and ignored by the grammar: ``title``,
  ``description``, ``examples``, ``default``, ``$comment``, ``$schema``, ``$id``.

Not enforced (so refused): numeric bounds (``minimum``, ``maximum``, ``multipleOf``...), ``pattern``
(llama.cpp translates only part of the regex syntax), other string formats, ``uniqueItems``,
``contains``, ``minProperties`` / ``maxProperties``, ``patternProperties``, ``allOf``, ``not``,
``if`` / ``then`` / ``else``, boolean subschemas, remote ``$ref``.

**Bound every free-text field** (``maxLength``) and every list (``maxItems``): the grammar forces
JSON, not brevity, and a reply cut off by ``max_tokens`` is not JSON. ``bounded=True`` checks it.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping

from flowbot.errors import FlowBotError

#: keywords that only annotate (for people and for the model's prompt); the grammar ignores them
ANNOTATIONS = frozenset({"title", "description", "examples", "default", "$comment", "$schema", "$id"})
#: where subschemas may be defined for ``$ref``
DEFINITIONS = ("$defs", "definitions")
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
STRING_FORMATS = ("date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")

#: per kind of node, the keywords the grammar enforces (besides annotations)
_KEYWORDS = {
    "ref": {"$ref"},
    "union": {"anyOf", "oneOf"},
    "literal": {"enum", "const", "type"},
    "object": {"type", "properties", "required", "additionalProperties"},
    "array": {"type", "items", "prefixItems", "minItems", "maxItems"},
    "string": {"type", "minLength", "maxLength", "format"},
    "scalar": {"type"},
}
_WHY = {
    "minimum": "numeric bounds are not enforced; use an enum or check the value in code",
    "maximum": "numeric bounds are not enforced; use an enum or check the value in code",
    "exclusiveMinimum": "numeric bounds are not enforced; use an enum or check the value in code",
    "exclusiveMaximum": "numeric bounds are not enforced; use an enum or check the value in code",
    "multipleOf": "not enforced",
    "pattern": "llama.cpp translates only part of the regex syntax; use an enum",
    "allOf": "not supported; write one object with all the properties",
    "nullable": "not JSON Schema; use anyOf with {'type': 'null'}",
}


class SchemaError(FlowBotError):
    """A JSON schema that is malformed, or that a provider cannot enforce; the message names the part."""


def schema_text(schema: Mapping[str, Any]) -> str:
    """The canonical text of a schema: compact JSON, key order kept (it decides property order)."""
    if not isinstance(schema, Mapping):
        raise SchemaError(f"a JSON schema must be an object (a dict), got {type(schema).__name__}")
    try:
        return json.dumps(schema, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"the JSON schema is not JSON-serializable: {exc}") from None


def unsupported_parts(schema: Any, *, bounded: bool = False) -> list[str]:
    """Every part of ``schema`` the embedded model's grammar would not enforce, one line each,
    located by JSON pointer (``/properties/edit/anyOf/0: ...``); empty when it is all enforced.

    ``bounded``: also require ``maxLength`` on free-text strings and ``maxItems`` on lists.

        >>> unsupported_parts({"type": "integer", "minimum": 0})
        ["/: 'minimum' is not enforced (numeric bounds are not enforced; use an enum or check the value in code)"]
    """
    if not isinstance(schema, Mapping):
        return ["/: the schema must be an object"]
    defs = {f"#/{key}/{name}" for key in DEFINITIONS for name in (schema.get(key) or {})}
    return list(_problems(schema, "", defs, bounded, root=True))


def _problems(node: Any, path: str, defs: set[str], bounded: bool, root: bool = False) -> Iterator[str]:
    where = path or "/"
    if not isinstance(node, Mapping):
        yield f"{where}: a subschema must be an object, got {json.dumps(node)}"
        return
    kind = _kind(node)
    if kind is None:
        yield f"{where}: no 'type' (or enum, const, anyOf, $ref): the grammar cannot tell what to generate"
        return
    if isinstance(node.get("type"), list):
        yield f"{where}: a list of types drops the node's other keywords; use anyOf of one-type schemas"
        return
    allowed = _KEYWORDS[kind] | ANNOTATIONS | (set(DEFINITIONS) if root else set())
    for key in node:
        if key not in allowed:
            why = _WHY.get(key, f"not enforced for a {kind} node" if _is_keyword(key) else "unknown keyword")
            yield f"{where}: {key!r} is not enforced ({why})"
    yield from _check_kind(kind, node, path, defs, bounded)
    if root:
        for key in DEFINITIONS:
            for name, sub in (node.get(key) or {}).items():
                yield from _problems(sub, f"/{key}/{name}", defs, bounded)


def _kind(node: Mapping[str, Any]) -> str | None:
    t = node.get("type")
    if "$ref" in node:
        return "ref"
    if "anyOf" in node or "oneOf" in node:
        return "union"
    if "enum" in node or "const" in node:
        return "literal"
    if isinstance(t, list):
        return "scalar"  # reported by the caller
    if t == "object" or (t is None and ("properties" in node or "additionalProperties" in node)):
        return "object"
    if t == "array" or (t is None and ("items" in node or "prefixItems" in node)):
        return "array"
    if t == "string":
        return "string"
    if t in TYPES:
        return "scalar"
    return None


def _check_kind(kind: str, node: Mapping[str, Any], path: str, defs: set[str], bounded: bool) -> Iterator[str]:
    where = path or "/"
    if kind == "ref":
        if node["$ref"] not in defs:
            yield f"{where}: $ref {node['$ref']!r} must point into this schema's $defs"
    elif kind == "union":
        if "anyOf" in node and "oneOf" in node:
            yield f"{where}: use anyOf or oneOf, not both"
        alternatives = node.get("anyOf", node.get("oneOf"))
        if not isinstance(alternatives, list) or not alternatives:
            yield f"{where}: anyOf/oneOf must be a non-empty list"
            return
        for i, sub in enumerate(alternatives):
            yield from _problems(sub, f"{path}/{'anyOf' if 'anyOf' in node else 'oneOf'}/{i}", defs, bounded)
    elif kind == "literal":
        values = node["enum"] if "enum" in node else [node["const"]]
        if not isinstance(values, list) or not values:
            yield f"{where}: enum must be a non-empty list"
            return
        for v in _strings_in(values):
            if any(c in v for c in '\\"') or any(ord(c) < 0x20 for c in v):
                yield f"{where}: the value {v!r} has a backslash, quote or control character, which the grammar garbles"
    elif kind == "object":
        yield from _check_object(node, path, defs, bounded)
    elif kind == "array":
        yield from _check_array(node, path, defs, bounded)
    elif kind == "string":
        fmt = node.get("format")
        if fmt is not None and fmt not in STRING_FORMATS:
            yield f"{where}: format {fmt!r} is not enforced (only {', '.join(STRING_FORMATS[:4])})"
        if fmt is not None and ("minLength" in node or "maxLength" in node):
            yield f"{where}: with a format, minLength/maxLength are not enforced"
        if bounded and fmt is None and "maxLength" not in node:
            yield f"{where}: a free-text string needs maxLength (bounded)"


def _check_object(node: Mapping[str, Any], path: str, defs: set[str], bounded: bool) -> Iterator[str]:
    where = path or "/"
    props = node.get("properties") or {}
    for name, sub in props.items():
        if any(c in name for c in '\\"') or any(ord(c) < 0x20 for c in name):
            yield f"{where}: property name {name!r} has a backslash, quote or control character"
        yield from _problems(sub, f"{path}/properties/{name}", defs, bounded)
    for name in node.get("required") or []:
        if name not in props:
            yield f"{where}: required {name!r} is not in properties, so the grammar can never produce it"
    extra = node.get("additionalProperties")
    if extra is True or (extra is None and "properties" not in node):
        yield f"{where}: an object with arbitrary keys is not constrained; list properties and set additionalProperties false"
    elif isinstance(extra, Mapping):
        yield from _problems(extra, f"{path}/additionalProperties", defs, bounded)


def _check_array(node: Mapping[str, Any], path: str, defs: set[str], bounded: bool) -> Iterator[str]:
    where = path or "/"
    items, prefix = node.get("items"), node.get("prefixItems")
    if isinstance(prefix, list):
        if items not in (None, False):
            yield f"{where}: prefixItems with items is not enforced (the grammar uses items and drops prefixItems)"
        for i, sub in enumerate(prefix):
            yield from _problems(sub, f"{path}/prefixItems/{i}", defs, bounded)
        return
    if not isinstance(items, Mapping):
        yield f"{where}: an array needs 'items' (one schema) or 'prefixItems'; without it the items are not constrained"
        return
    yield from _problems(items, f"{path}/items", defs, bounded)
    if bounded and "maxItems" not in node:
        yield f"{where}: a list needs maxItems (bounded)"


def _strings_in(values: list[Any]) -> Iterator[str]:
    for v in values:
        if isinstance(v, str):
            yield v
        elif isinstance(v, list):
            yield from _strings_in(v)
        elif isinstance(v, Mapping):
            yield from (k for k in v)
            yield from _strings_in(list(v.values()))


_KNOWN = {"$ref", "anyOf", "oneOf", "allOf", "not", "if", "then", "else", "enum", "const", "type",
          "properties", "required", "additionalProperties", "patternProperties", "propertyNames",
          "minProperties", "maxProperties", "dependentRequired", "dependentSchemas", "items",
          "prefixItems", "additionalItems", "contains", "minContains", "maxContains", "minItems",
          "maxItems", "uniqueItems", "minLength", "maxLength", "pattern", "format", "minimum",
          "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "unevaluatedItems",
          "unevaluatedProperties", "contentEncoding", "contentMediaType", "$defs", "definitions"}


def _is_keyword(key: str) -> bool:
    return key in _KNOWN

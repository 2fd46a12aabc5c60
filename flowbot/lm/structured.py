"""Structured replies: ask for JSON that satisfies a schema, parse it, validate it, repair once.

    >>> import asyncio
    >>> from flowbot.lm import LMClient
    >>> from flowbot.testing import ScriptedLM
    >>> schema = {"type": "object", "properties": {"answer": {"type": "integer"}},
    ...           "required": ["answer"], "additionalProperties": False}
    >>> lm = LMClient(ScriptedLM(default='Sure: {"answer": 4}'))
    >>> reply = asyncio.run(complete_json(lm, [{"role": "user", "content": "2+2? Reply in JSON."}],
    ...                                   schema, max_tokens=32))
    >>> reply.status, reply.value
    ('valid', {'answer': 4})

:func:`complete_json` sends the schema with the request (the embedded model decodes under a
grammar, OpenAI-compatible servers and litellm get ``response_format``; see
:attr:`flowbot.lm.base.Provider.supports_schema`), finds the JSON in the reply (code fences and
prose around it are tolerated, for providers that cannot constrain), and validates it with
``jsonschema``. An invalid reply gets one repair turn quoting the validation error
(:data:`REPAIR_TEMPLATE`) when the provider could not constrain it, or when it was cut off; if
that fails too the reply is *dropped*: ``status == "dropped"``, ``value`` None. A model's bad
JSON never raises; LM errors (budget, transport) do, as for any call.

**Bound every free-text field with maxLength** (and lists with ``maxItems``): ``max_tokens``
must cover the longest valid reply, or the JSON is cut off before it closes. A cut-off reply is
recognised from its text (a JSON value that never closes), so a run replayed from the response
cache takes the same decisions as the run that paid for it.

Describe the fields in the messages: a grammar forces the keys, but the model only sees the
prompt. Prefer a flat object with short fields; :func:`check_schema` checks a schema (and, by
default, that the embedded model can enforce it) without loading any model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from flowbot.lm.base import Message, Usage
from flowbot.lm.client import LMClient
from flowbot.lm.schema import SchemaError, schema_text, unsupported_parts

Status = Literal["valid", "repaired", "dropped"]

#: the user turn that asks for a corrected reply; ``{error}`` says what was wrong, ``{schema}``
#: is the schema as compact JSON
REPAIR_TEMPLATE = (
    "Your reply cannot be used: {error}\n"
    "Reply again with only the corrected JSON, no other text. It must satisfy this JSON schema:\n"
    "{schema}"
)
#: the error quoted in the repair turn when a reply was cut off by ``max_tokens``
TRUNCATED_ERROR = "it was cut off before the JSON closed (at most {max_tokens} tokens): keep every text field short."
NO_JSON_ERROR = "it contains no JSON value."
CUT_OFF_ERROR = "it was cut off before the JSON closed."

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.S)
_MAX_GROUPS = 64  # bracketed groups tried when looking for JSON inside prose


@dataclass
class StructuredReply:
    """The outcome of :func:`complete_json`. Check ``status`` (or ``ok``), not ``value``: a schema
    may allow ``null``."""

    value: Any  # the parsed, schema-valid value; None when dropped
    status: Status  # "valid" first time, "repaired" by the second turn, or "dropped"
    texts: list[str]  # the raw reply of each attempt (one or two)
    errors: list[str] = field(default_factory=list)  # why each rejected attempt was rejected
    usage: Usage = field(default_factory=Usage)  # all attempts together
    constrained: bool = False  # the provider enforced the schema while decoding
    truncated: bool = False  # an attempt was cut off by max_tokens

    @property
    def ok(self) -> bool:
        return self.status != "dropped"


@dataclass(frozen=True)
class ParsedReply:
    """One reply text judged against a schema: ``error`` is None when ``value`` is valid."""

    value: Any
    error: str | None
    truncated: bool = False


def check_schema(schema: Mapping[str, Any], *, grammar: bool = True, bounded: bool = False) -> None:
    """Raise :class:`SchemaError` (a ValueError) naming the first problem, unless ``schema`` is a
    valid JSON schema (checked against its meta-schema with ``jsonschema``).

    ``grammar``: also require that the embedded model's grammar enforces all of it
    (:func:`flowbot.lm.schema.unsupported_parts`); ``bounded``: and that free-text strings have
    ``maxLength`` and lists ``maxItems``. No model or llama.cpp is needed.

        >>> check_schema({"type": "object", "properties": {"n": {"type": "integr"}}})
        Traceback (most recent call last):
        ...
        flowbot.lm.schema.SchemaError: invalid JSON schema at $.properties.n.type: 'integr' is not valid under any of the given schemas
    """
    schema_text(schema)  # a dict of JSON values, or SchemaError
    jsonschema = _jsonschema()
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaError(f"invalid JSON schema at {exc.json_path}: {exc.message}"[:500]) from None
    if grammar:
        problems = unsupported_parts(schema, bounded=bounded)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise SchemaError(f"the embedded model cannot enforce this schema: {problems[0]}{more}")


def parse_reply(text: str, schema: Mapping[str, Any]) -> ParsedReply:
    """Find a JSON value in ``text`` that satisfies ``schema``: the whole text, then code-fenced
    blocks, then each bracketed group in the prose. Raw control characters inside strings are
    accepted (a grammar lets them through). Never raises for the text."""
    validator = _validator(schema)
    found = _scan(text)
    for value in found.values:
        if validator.is_valid(value):
            return ParsedReply(value, None)
    if found.unclosed:
        return ParsedReply(None, CUT_OFF_ERROR, truncated=True)
    if found.values:
        return ParsedReply(None, _first_error(validator, found.values[0]))
    return ParsedReply(None, found.syntax_error or NO_JSON_ERROR)


async def complete_json(
    client: LMClient,
    messages: list[Message],
    schema: Mapping[str, Any],
    *,
    max_tokens: int,
    temperature: float = 0.0,
    seed: int | None = None,
    repair: bool = True,
) -> StructuredReply:
    """Ask for a reply satisfying ``schema``; parse, validate and (once) repair it.

    The repair turn (``repair=True``) is taken when the reply is invalid and the provider could
    not constrain it, or when it was cut off by ``max_tokens``; a constrained reply that is
    complete but invalid is dropped (a second try would decode the same way). Raises
    :class:`SchemaError` for a malformed schema; never for the model's reply.
    """
    check_schema(schema, grammar=False)
    schema = dict(schema)
    constrained = client.supports_schema
    kw: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed, "schema": schema}
    first = await client.complete(messages, **kw)
    reply = StructuredReply(None, "dropped", [first.text], usage=first.usage, constrained=constrained)
    verdict = parse_reply(first.text, schema)
    if verdict.error is None:
        reply.value, reply.status = verdict.value, "valid"
        return reply
    error = _described(verdict, max_tokens)
    reply.errors.append(error)
    reply.truncated = verdict.truncated
    if not repair or (constrained and not verdict.truncated):
        return reply
    turn = [*messages, {"role": "assistant", "content": first.text},
            {"role": "user", "content": REPAIR_TEMPLATE.format(error=error, schema=schema_text(schema))}]
    second = await client.complete(turn, **kw)
    reply.texts.append(second.text)
    reply.usage = reply.usage + second.usage
    verdict = parse_reply(second.text, schema)
    if verdict.error is None:
        reply.value, reply.status = verdict.value, "repaired"
    else:
        reply.errors.append(_described(verdict, max_tokens))
        reply.truncated = reply.truncated or verdict.truncated
    return reply


# -- parsing --------------------------------------------------------------------------------------
@dataclass
class _Found:
    values: list[Any] = field(default_factory=list)  # most likely first
    syntax_error: str | None = None  # of the first bracketed group that is not JSON
    unclosed: bool = False  # a bracketed group opens and never closes (cut off)


def _scan(text: str) -> _Found:
    """Every JSON value in ``text``: the whole text, fenced blocks, then each top-level bracketed
    group (never a piece nested in a group, which is part of a larger value or of prose)."""
    decoder = json.JSONDecoder(strict=False)
    found = _Found()
    try:
        found.values.append(decoder.decode(text.strip()))
        return found
    except ValueError:
        pass
    for block in _FENCE.findall(text):
        try:
            found.values.append(decoder.decode(block.strip()))
        except ValueError:
            pass
    pos = 0
    for _ in range(_MAX_GROUPS):
        start = _next_bracket(text, pos)
        if start < 0:
            break
        try:
            value, pos = decoder.raw_decode(text, start)
            found.values.append(value)
            continue
        except json.JSONDecodeError as exc:
            error = f"the JSON is malformed: {exc.msg} at line {exc.lineno} column {exc.colno}."
        pos = _group_end(text, start)
        if pos < 0:
            found.unclosed = True
            break
        found.syntax_error = found.syntax_error or error
    return found


def _next_bracket(text: str, pos: int) -> int:
    hits = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
    return min(hits) if hits else -1


def _group_end(text: str, start: int) -> int:
    """The index after the bracket closing the group opened at ``start`` (JSON strings are
    skipped), or -1 when the text ends first."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def _first_error(validator: Any, value: Any) -> str:
    jsonschema = _jsonschema()
    err = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if err is None:  # pragma: no cover - only called for invalid values
        return "it does not satisfy the schema."
    where = "" if err.json_path == "$" else f" at {err.json_path}"
    return f"the JSON is not valid{where}: {err.message}"[:400]


def _described(verdict: ParsedReply, max_tokens: int) -> str:
    return TRUNCATED_ERROR.format(max_tokens=max_tokens) if verdict.truncated else str(verdict.error)


def _validator(schema: Mapping[str, Any]) -> Any:
    jsonschema = _jsonschema()
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _jsonschema() -> Any:
    import jsonschema  # ~0.15 s to import: only when structured output is used

    return jsonschema

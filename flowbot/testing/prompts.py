"""Scripted replies chosen by the prompt that made a request, never by a phrase copied from it.

A test whose scripted model picks its reply by a phrase of a prompt stops matching, unnoticed, when
the prompt is reworded, and a catch-all default then answers the request with something else. These
matchers are built from the prompts' own text, so they follow any rewording: the optimizer's named
prompts (:data:`flowbot.optim.prompts.NAMED`), the repair turn of a JSON reply
(:data:`flowbot.lm.structured.REPAIR_TEMPLATE`) and the instruction templates of the nodes the
operators and seeds build (:func:`flowbot.testing.scripted.scripted_optimizer` answers the named
prompts it is given and fails the run on any other request).

    >>> from flowbot.optim import prompts as P
    >>> user = P.LOSS_USER.format(task_description="add", inputs="q: 1+1", output_field="a", prediction="3",
    ...                           gold="2", score="0.00", metric_feedback="")
    >>> which_prompt([("system", P.LOSS_SYSTEM), ("user", user)]), optimizer_prompt("backward")([("user", user)])
    ('loss', False)
    >>> prompt_fields("loss", [("system", P.LOSS_SYSTEM), ("user", user)])["prediction"]
    '3'
"""

from __future__ import annotations

import functools
import re
import string
from typing import Any, Callable

from flowbot.lm.base import LMRequest
from flowbot.lm.structured import REPAIR_TEMPLATE
from flowbot.optim.prompts import NAMED

#: a request as a matcher sees it: an LMRequest, (role, content) pairs, chat message dicts, or the
#: body of an OpenAI-style request (``{"messages": [...]}``)
RequestLike = Any
Matcher = Callable[[RequestLike], bool]


@functools.lru_cache(maxsize=None)
def template_pattern(template: str) -> re.Pattern[str]:
    """A regex matching every rendering of a ``str.format`` template (each field: any text).

    >>> bool(template_pattern("Score: {score:.2f} of {n}").fullmatch("Score: 0.50 of 8"))
    True
    """
    parts = []
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append("(?:.*?)")
    return re.compile("".join(parts), re.S)


@functools.lru_cache(maxsize=None)
def _fields_pattern(template: str) -> re.Pattern[str]:
    parts, named = [], set()
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(f"(?P<{field}>.*?)" if field not in named else "(?:.*?)")
            named.add(field)
    return re.compile("".join(parts), re.S)


def prompt_fields(name: str, request: RequestLike) -> dict[str, str]:
    """The values the optimizer's prompt ``name`` was filled with in ``request`` (its last message),
    read back through the template: a reply can depend on, say, the step a backward call is about
    (``prompt_fields("backward", req)["node_id"]``) without copying the prompt's wording. Raises
    ``ValueError`` when the request is not that prompt."""
    if not optimizer_prompt(name)(request):
        raise ValueError(f"not a request of the optimizer's {name!r} prompt")
    match = _fields_pattern(NAMED[name][1]).fullmatch(messages_of(request)[-1][1])
    assert match is not None
    return match.groupdict()


def messages_of(request: RequestLike) -> list[tuple[str, str]]:
    """The (role, content) pairs of a request in any of the forms :data:`RequestLike` names."""
    if isinstance(request, LMRequest):
        return list(request.messages)
    if isinstance(request, dict):
        request = request.get("messages", [])
    return [(m["role"], m["content"]) if isinstance(m, dict) else (m[0], m[1]) for m in request]


def optimizer_prompt(name: str) -> Matcher:
    """Matches a request made from the optimizer's prompt ``name`` (see
    :data:`flowbot.optim.prompts.NAMED`): its system text first and its user template, rendered,
    last (a repair turn that follows it is :func:`repair_turn`, not this)."""
    if name not in NAMED:
        raise KeyError(f"no optimizer prompt named {name!r} (named: {', '.join(sorted(NAMED))})")
    system, user = NAMED[name]
    pattern = template_pattern(user)

    def match(request: RequestLike) -> bool:
        messages = messages_of(request)
        return (len(messages) >= 2 and messages[0] == ("system", system) and messages[-1][0] == "user"
                and pattern.fullmatch(messages[-1][1]) is not None)

    return match


def repair_turn(name: str | None = None) -> Matcher:
    """Matches the repair turn of a JSON reply (its last message asks again), after the optimizer's
    prompt ``name`` when one is given."""
    pattern = template_pattern(REPAIR_TEMPLATE)

    def match(request: RequestLike) -> bool:
        messages = messages_of(request)
        if not messages or messages[-1][0] != "user" or pattern.fullmatch(messages[-1][1]) is None:
            return False
        return name is None or messages[0] == ("system", NAMED[name][0])

    return match


def instructed(template: str) -> Matcher:
    """Matches a task request whose system text begins with a rendering of the instruction
    ``template`` (an operator's or a seed's, e.g. ``PROGRAM_INSTRUCTION`` or ``COT_INSTRUCTION``)."""
    pattern = template_pattern(template)

    def match(request: RequestLike) -> bool:
        messages = messages_of(request)
        return bool(messages) and messages[0][0] == "system" and pattern.match(messages[0][1]) is not None

    return match


def which_prompt(request: RequestLike) -> str | None:
    """The name of the optimizer prompt that made ``request`` (``"<name> repair"`` for its repair
    turn), or None when it is not one of them."""
    for name in NAMED:
        if optimizer_prompt(name)(request):
            return name
        if repair_turn(name)(request):
            return f"{name} repair"
    return None


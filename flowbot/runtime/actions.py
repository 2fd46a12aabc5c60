"""Reading a tool call out of a ReAct reply.

The prompt asks for ``Action: <tool>[<input>]``. Small models often write the call another way: the
tool's name alone on its line, with the program in a fenced block below it or on an
``Action Input:`` line, or with nothing at all before they start to invent the observation. Read as
no call, such a reply ended the loop and its ``Action: python`` became the answer (a silent 0 on every
DROP item for the 1.5B). So those forms are read as calls too, and a call without an input comes back
as an :class:`Action` whose ``input`` is None, which the loop answers with an error showing the form.

>>> parse_action("I will compute it.\\nAction: python[print(2004 - 1921)]")
Action(tool='python', input='print(2004 - 1921)', end=53)
>>> parse_action("Action: python\\n```python\\nprint(83)\\n```\\n").input
'print(83)'
>>> parse_action("Action: python\\n")
Action(tool='python', input=None, end=14)
>>> parse_action("The answer is 83.\\nAnswer: 83") is None
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Action", "parse_action"]

_BRACKETS = re.compile(r"Action:\s*([A-Za-z_]\w*)\s*\[(.*)\]", re.S)
#: the tool's name alone on an ``Action:`` line (a trailing colon allowed)
_BARE = re.compile(r"^[ \t]*Action:[ \t]*([A-Za-z_]\w*)[ \t]*:?[ \t]*$", re.M)
_FENCE = re.compile(r"\A\s*```[\w+.-]*[ \t]*\n(.*?)```", re.S)
_INPUT_LINE = re.compile(r"\A\s*Action Input:[ \t]*(.+)", re.S)


@dataclass(frozen=True)
class Action:
    """A tool call: the tool's name, its input (None when the call gave none) and where the call
    ends in the reply (what the transcript keeps of it)."""

    tool: str
    input: str | None
    end: int


def parse_action(reply: str) -> Action | None:
    """The tool call the reply makes, or None when it makes none (it answers)."""
    m = _BRACKETS.search(reply)
    if m:
        return Action(m.group(1), m.group(2).strip(), m.end())
    m = _BARE.search(reply)
    if m is None:
        return None
    rest = reply[m.end():]
    fence = _FENCE.match(rest)
    if fence and fence.group(1).strip():
        return Action(m.group(1), fence.group(1).strip(), m.end() + fence.end())
    given = _INPUT_LINE.match(rest)
    if given and given.group(1).strip():
        return Action(m.group(1), given.group(1).strip(), len(reply))
    if rest.strip():  # prose after the name: a reply that goes on to answer is an answer, as before
        return None
    return Action(m.group(1), None, m.end())

"""What tests use, FlowBot's own and yours: a scripted LM (replies from rules, no model), an
OpenAI-compatible HTTP server on 127.0.0.1 (real client code talks real HTTP to it) and the faults
it can inject (rate limits, 5xx, slow or dropped answers, malformed bodies).

    >>> import asyncio
    >>> from flowbot.lm import LMClient
    >>> asyncio.run(LMClient(ScriptedLM(default="4")).complete([{"role": "user", "content": "2+2?"}])).text
    '4'

Nothing in FlowBot itself imports this package (see the layer rule in the README).
"""

from flowbot.testing.faults import Fault
from flowbot.testing.scripted import ScriptedLM
from flowbot.testing.server import OpenAITestServer, subprocess_server

__all__ = ["Fault", "OpenAITestServer", "ScriptedLM", "subprocess_server"]

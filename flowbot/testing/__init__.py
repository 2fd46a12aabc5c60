"""What tests use, FlowBot's own and yours: a scripted LM (replies from rules, no model), an
OpenAI-compatible HTTP server on 127.0.0.1 (real client code talks real HTTP to it) and the faults
it can inject (rate limits, 5xx, slow or dropped answers, malformed bodies); and matchers that know a
request by the prompt that made it (:mod:`flowbot.testing.prompts`), so scripted replies survive a
reworded prompt.

    >>> import asyncio
    >>> from flowbot.lm import LMClient
    >>> asyncio.run(LMClient(ScriptedLM(default="4")).complete([{"role": "user", "content": "2+2?"}])).text
    '4'

Nothing in FlowBot itself imports this package (see the layer rule in the README).
"""

from flowbot.testing.faults import Fault
from flowbot.testing.prompts import instructed, optimizer_prompt, prompt_fields, repair_turn, which_prompt
from flowbot.testing.scripted import ScriptedLM, scripted_optimizer
from flowbot.testing.server import OpenAITestServer, subprocess_server

__all__ = ["Fault", "OpenAITestServer", "ScriptedLM", "instructed", "optimizer_prompt", "prompt_fields",
           "repair_turn", "scripted_optimizer", "subprocess_server", "which_prompt"]

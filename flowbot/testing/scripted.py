"""A deterministic scripted LM for tests: replies come from rules, a queue, or a default.

    >>> from flowbot.testing import ScriptedLM
    >>> lm = ScriptedLM(rules=[(r"capital of France", "Paris")], default="I don't know")
    >>> import asyncio
    >>> from flowbot.lm.base import LMRequest
    >>> asyncio.run(lm.complete(LMRequest.of([{"role": "user", "content": "capital of France?"}]))).text
    'Paris'

A rule is ``(matcher, reply)``: ``matcher`` is a regex searched in the whole conversation text or a
predicate ``fn(request) -> bool``; ``reply`` is a string or ``fn(request, sample_index) -> str``.
Rules are tried in order; the queue (if any) is used when no rule matches; then ``default``; with
none of them, the request fails (:class:`~flowbot.lm.base.LMPermanentError`, which stops the run
that made it). To answer the optimizer's prompts, match them by name, not by wording
(:mod:`flowbot.testing.prompts`); :func:`scripted_optimizer` does that.

    >>> from flowbot.optim import prompts as P
    >>> opt = scripted_optimizer(loss="The answer is wrong.")
    >>> user = P.LOSS_USER.format(task_description="add", inputs="q: 1+1", output_field="a", prediction="3",
    ...                           gold="2", score="0.00", metric_feedback="")
    >>> asyncio.run(opt.complete(LMRequest.of([{"role": "system", "content": P.LOSS_SYSTEM},
    ...                                        {"role": "user", "content": user}]))).text
    'The answer is wrong.'
    >>> asyncio.run(opt.complete(LMRequest.of([{"role": "user", "content": "hello?"}])))
    Traceback (most recent call last):
    ...
    flowbot.lm.base.LMPermanentError: ScriptedLM 'optimizer' has no reply for a request: 'hello?'

A request's JSON schema reaches matchers and replies as ``request.schema`` (text) and
``request.json_schema`` (a dict), so a test can answer schema requests. The scripted LM cannot
constrain its replies: ``supports_schema`` is False unless a test sets it to pretend otherwise.

    >>> lm = ScriptedLM(default=lambda req, i: '{"n": 1}' if req.json_schema else "1")
    >>> asyncio.run(lm.complete(LMRequest.of([{"role": "user", "content": "n?"}], schema={"type": "object"}))).text
    '{"n": 1}'
"""

from __future__ import annotations

import re
from collections import deque
from typing import Callable, Iterable, Union

from flowbot.lm.base import Completion, LMPermanentError, LMRequest, Provider, Usage
from flowbot.testing.prompts import Matcher as RequestMatcher
from flowbot.testing.prompts import optimizer_prompt, repair_turn, which_prompt

Matcher = Union[str, "re.Pattern[str]", Callable[[LMRequest], bool]]
Reply = Union[str, Callable[[LMRequest, int], str]]


def conversation_text(request: LMRequest) -> str:
    return "\n".join(content for _, content in request.messages)


def count_tokens(text: str) -> int:
    """A crude, deterministic token count (whitespace words), so usage is non-zero in tests; the
    test server reports the same count."""
    return len(text.split())


class ScriptedLM(Provider):
    def __init__(
        self,
        rules: Iterable[tuple[Matcher, Reply]] = (),
        *,
        queue: Iterable[str] = (),
        default: Reply | None = None,
        model: str = "scripted",
        price_per_token: tuple[float, float] | None = None,
        max_concurrency: int = 64,
        supports_schema: bool = False,
    ) -> None:
        self.model = model
        #: pretend to enforce schemas (replies are returned as scripted, never checked)
        self.supports_schema = supports_schema
        self.rules = [(self._compile(m), r) for m, r in rules]
        self.queue = deque(queue)
        self.default = default
        self.calls: list[LMRequest] = []  # every request that reached the provider (not the cache)
        self._price = price_per_token
        self.max_concurrency = max_concurrency

    @staticmethod
    def _compile(m: Matcher) -> Callable[[LMRequest], bool]:
        if callable(m) and not isinstance(m, re.Pattern):
            return m
        pattern = re.compile(m, re.S) if isinstance(m, str) else m
        return lambda req: bool(pattern.search(conversation_text(req)))

    def price_per_token(self) -> tuple[float, float] | None:
        return self._price

    def _reply(self, request: LMRequest, index: int) -> str:
        for match, reply in self.rules:
            if match(request):
                return reply(request, index) if callable(reply) else reply
        if self.queue:
            return self.queue.popleft()
        if self.default is not None:
            return self.default(request, index) if callable(self.default) else self.default
        last = request.messages[-1][1][:200] if request.messages else ""
        named = which_prompt(request)
        what = f"the optimizer's {named!r} prompt" if named else "a request"
        raise LMPermanentError(f"ScriptedLM {self.model!r} has no reply for {what}: {last!r}")

    async def complete(self, request: LMRequest) -> Completion:
        self.calls.append(request)
        texts = [self._reply(request, i) for i in range(request.n)]
        prompt = count_tokens(conversation_text(request)) * request.n
        completion = sum(count_tokens(t) for t in texts)
        return Completion(texts=texts, usage=Usage(prompt, completion), model=self.model)


def scripted_optimizer(*, model: str = "optimizer", repair: Reply | None = None,
                       price_per_token: tuple[float, float] | None = None, **replies: Reply) -> ScriptedLM:
    """A scripted optimizer answering the named prompts given as keywords (``loss=``, ``backward=``,
    ``aggregate=``, ``rewrite=``, ``rule=``, ``edit=``, ``aflow=``; ``repair=`` for the repair turn of
    an edit), each a text or ``fn(request, sample_index)``. Any other request raises, which fails
    the run that made it: a reworded prompt or a new kind of request is never answered by accident.
    """
    rules: list[tuple[RequestMatcher, Reply]] = []
    if repair is not None:
        rules.append((repair_turn(), repair))
    rules += [(optimizer_prompt(name), reply) for name, reply in replies.items()]
    return ScriptedLM(rules, model=model, price_per_token=price_per_token)


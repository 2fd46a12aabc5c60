"""Any OpenAI-compatible chat server by base URL: vLLM, Ollama, llama.cpp server, OpenAI itself.

    >>> from flowbot.lm import LMClient
    >>> from flowbot.lm.openai_compat import OpenAICompatProvider
    >>> lm = LMClient(OpenAICompatProvider("qwen2.5-7b", base_url="http://localhost:8000/v1"))
    >>> # await lm.complete([{"role": "user", "content": "2+2?"}])

The provider is transport only: it makes one attempt per call and turns every failure into
:class:`LMTransientError` (worth retrying: 429, 5xx, timeouts, dropped connections, malformed
bodies) or :class:`LMPermanentError` (bad key, unknown model, invalid request). Retries, the
cache, budgets and the concurrency limit come from :class:`flowbot.lm.client.LMClient`.

The API key is read only from an environment variable (``OPENAI_API_KEY`` unless told otherwise)
and never appears in an error message or a repr.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib.util
import json
import logging
import math
import os
import re
import threading
import time
from typing import Any, AsyncGenerator, Awaitable, Callable, Literal, Mapping

import openai

from flowbot.errors import FlowBotError
from flowbot.lm.base import (Completion, LMConnectionError, LMPermanentError, LMRequest, LMTransientError, Provider,
                             Usage, could_not_connect)
from flowbot.lm.redact import clean_key, redact

log = logging.getLogger(__name__)

#: sent when the key variable is unset: local servers ignore the key, but the client needs one
PLACEHOLDER_KEY = "not-needed"

# Statuses the OpenAI API documents as worth retrying besides 5xx.
_RETRYABLE_4XX = {408, 409, 425, 429}


class _Secret:
    """Holds the API key (stripped; ``raw`` as the environment had it); its repr never shows it."""

    __slots__ = ("value", "raw")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self.value = raw.strip()

    def __repr__(self) -> str:
        return "<hidden>"

    def redact(self, text: str) -> str:
        if self.value and self.value != PLACEHOLDER_KEY:
            return redact(text, [self.raw, self.value])
        return text


# -- helpers shared with the litellm provider ---------------------------------------------------
def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    get = headers.get
    raw_ms = get("retry-after-ms") or get("Retry-After-Ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = get("retry-after") or get("Retry-After")
    if not raw:
        return None
    try:
        value = float(raw)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def server_message(body: object, fallback: str = "") -> str:
    """The human part of an error body ({"error": {"message": ...}} or similar), shortened."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            msg = inner.get("message") or inner.get("detail") or inner.get("msg")
            if msg:
                return str(msg)[:500]
        elif isinstance(inner, str) and inner:
            return inner[:500]
    if isinstance(body, str) and body:
        return body[:500]
    return fallback[:500]


def error_for_status(
    status: int,
    message: str,
    *,
    model: str,
    endpoint: str,
    key_env: str | None,
    key_set: bool = True,
    retry_after: float | None = None,
    code: str | None = None,
) -> Exception:
    """Map an HTTP error status to LMTransientError / LMPermanentError with a message saying what to fix."""
    said = f": {message}" if message else ""
    if status == 429 and (code == "insufficient_quota" or "exceeded your current quota" in message):
        return LMPermanentError(f"quota exhausted at {endpoint} for model {model!r}{said}")
    if status in _RETRYABLE_4XX or status >= 500:
        return LMTransientError(f"{endpoint} returned HTTP {status} for model {model!r}{said}",
                                retry_after=retry_after)
    if status in (401, 403):
        if key_env:
            hint = f"check the {key_env} environment variable" + ("" if key_set else " (it is not set)")
        else:
            hint = "check the API key in the environment"
        return LMPermanentError(f"authentication failed for {endpoint}: {hint} (HTTP {status}{said})")
    if status == 404:
        return LMPermanentError(
            f"model {model!r} not found at {endpoint} (HTTP 404{said}); check the model name, "
            "and that the base URL points at the API root (usually ending in /v1)")
    return LMPermanentError(f"{endpoint} rejected the request for model {model!r} (HTTP {status}{said})")


_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI accepts as json_schema.name


def response_format(schema: str) -> dict[str, Any]:
    """OpenAI's structured-output request for a schema (canonical JSON text): strict decoding.
    The name is the schema's ``title`` when it is a valid name, else ``"reply"``."""
    parsed = json.loads(schema)
    title = parsed.get("title") if isinstance(parsed, dict) else None
    name = title if isinstance(title, str) and _SCHEMA_NAME.match(title) else "reply"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": parsed, "strict": True}}


def estimate_tokens(text: str) -> int:
    """About four characters per token: used only when a server reports no usage."""
    return math.ceil(len(text) / 4) if text else 0


def estimated_usage(request: LMRequest, texts: list[str]) -> Usage:
    """The usage of a call whose server reported none (:func:`estimate_tokens` of every message and reply)."""
    return Usage(sum(estimate_tokens(c) for _, c in request.messages), sum(estimate_tokens(t) for t in texts))


def chat_arguments(request: LMRequest, model: str, n: int, seed: int | None, *, schema: bool = True) -> dict[str, Any]:
    """The chat-completions arguments asking ``model`` for ``n`` samples of ``request`` from ``seed``,
    as both HTTP providers send them (``schema``: send the request's JSON schema as ``response_format``).

    >>> args = chat_arguments(LMRequest.of([{"role": "user", "content": "hi"}], max_tokens=5), "m", 2, 7)
    >>> args["messages"], args["n"], args["seed"], args["max_tokens"]
    ([{'role': 'user', 'content': 'hi'}], 2, 7, 5)
    """
    args: dict[str, Any] = {"model": model, "messages": request.message_dicts(), "temperature": request.temperature}
    if n > 1:
        args["n"] = n
    if seed is not None:
        args["seed"] = seed
    if request.max_tokens is not None:
        args["max_tokens"] = request.max_tokens
    if request.stop:
        args["stop"] = list(request.stop)
    if request.schema is not None and schema:
        args["response_format"] = response_format(request.schema)
    return args


FetchFn = Callable[[int, "int | None"], Awaitable[tuple[list[str], Usage]]]


async def collect_samples(request: LMRequest, fetch: FetchFn) -> tuple[list[str], Usage]:
    """Ask for ``request.n`` samples; if the server returns fewer (many local servers ignore
    ``n``), ask again for the rest. A follow-up request starting at sample *k* uses ``seed + k``."""
    texts: list[str] = []
    usage = Usage()
    while len(texts) < request.n:
        need = request.n - len(texts)
        seed = None if request.seed is None else request.seed + len(texts)
        got, used = await fetch(need, seed)
        if not got:
            raise LMTransientError("server returned no choices")
        texts.extend(got[:need])
        usage = usage + used
    return texts, usage


async def _closes_with_loop(client: Any) -> AsyncGenerator[None, None]:
    """Close ``client`` when its event loop shuts down.

    Once started, an async generator is registered with the running loop, and ``asyncio.run``
    finalizes such generators (``loop.shutdown_asyncgens``) while the loop still runs. So a client
    made inside ``asyncio.run`` (the sync API) closes its connections instead of leaking sockets.
    The provider keeps a reference, so the generator is not finalized earlier.
    """
    try:
        yield
    finally:
        await client.close()


def _choice_index(choice: Any) -> int:
    index = choice.get("index") if isinstance(choice, dict) else None
    return index if isinstance(index, int) else 0


# -- the provider ---------------------------------------------------------------------------------
class OpenAICompatProvider(Provider):
    """Chat completions from any OpenAI-compatible server, through the official ``openai`` client.

    Args:
        model: the model name the server knows (e.g. ``"llama3.1:8b"`` for Ollama).
        base_url: the API root, e.g. ``http://localhost:11434/v1``.
        api_key_env: the environment variable holding the key. When unset, a placeholder key is
            sent (local servers ignore it); a 401 then says which variable to set.
        timeout: seconds for one HTTP attempt (``RetryPolicy.attempt_timeout`` also applies).
        max_concurrency: requests in flight at once (enforced by LMClient).
        price_per_token: (input, output) dollars per token when known, for the meter and budgets.
        extra_body: extra JSON fields for every request (e.g. vLLM's ``top_k``).
        http_backend: ``"httpx"`` (default) or ``"aiohttp"``, which costs about half the CPU per
            call and so sustains more concurrent requests (needs ``pip install aiohttp``).
        supports_schema: send a request's JSON schema as ``response_format`` (``json_schema``,
            strict), which vLLM, llama.cpp's server, Ollama and OpenAI enforce. False for a server
            that rejects or ignores it: the schema is then not sent, and callers check replies.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 600.0,
        max_concurrency: int = 8,
        price_per_token: tuple[float, float] | None = None,
        extra_body: dict[str, Any] | None = None,
        http_backend: Literal["httpx", "aiohttp"] = "httpx",
        supports_schema: bool = True,
    ) -> None:
        if not model:
            raise FlowBotError("OpenAICompatProvider needs a model name")
        if not base_url.startswith(("http://", "https://")):
            raise FlowBotError(f"base_url must start with http:// or https://, got {base_url!r}")
        if http_backend not in ("httpx", "aiohttp"):
            raise FlowBotError(f"http_backend must be 'httpx' or 'aiohttp', got {http_backend!r}")
        if http_backend == "aiohttp" and (
            importlib.util.find_spec("aiohttp") is None or not hasattr(openai, "DefaultAioHttpClient")
        ):
            raise FlowBotError("http_backend='aiohttp' needs aiohttp and openai>=1.80: pip install aiohttp")
        self.http_backend = http_backend
        self.supports_schema = supports_schema
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.extra_body = dict(extra_body or {})
        self._price = price_per_token
        self._key: _Secret | None = None  # read from the environment at first use
        # One AsyncOpenAI per event loop: its httpx pool is bound to the loop that first used it,
        # and the sync API runs each call in a fresh loop.
        self._clients: dict[asyncio.AbstractEventLoop, tuple[Any, AsyncGenerator[None, None]]] = {}
        self._lock = threading.Lock()
        #: calls whose usage the server did not report, so tokens were estimated
        self.estimated_usage_calls = 0

    @property
    def cache_id(self) -> str:
        return f"{self.model}@{self.base_url}"  # two servers may both call their model "default"

    def __repr__(self) -> str:
        backend = "" if self.http_backend == "httpx" else f", http_backend={self.http_backend!r}"
        return (f"OpenAICompatProvider(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r}{backend})")

    def price_per_token(self) -> tuple[float, float] | None:
        return self._price

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (the Ray backend ships providers to its workers): without the live HTTP
        clients, the lock and the key, which the copy makes and reads again where it runs."""
        state = dict(self.__dict__)
        state.update(_clients={}, _lock=None, _key=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- clients ---------------------------------------------------------------------------
    def _secret(self) -> _Secret:
        if self._key is None:
            self._key = _Secret(os.environ.get(self.api_key_env, ""))
        if self._key.value:
            clean_key(self._key.value, self.api_key_env)  # a key no header can carry fails at once
        return self._key

    async def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        with self._lock:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                del self._clients[old]
            entry = self._clients.get(loop)
            if entry is None:
                client = openai.AsyncOpenAI(
                    base_url=self.base_url,
                    api_key=self._secret().value or PLACEHOLDER_KEY,
                    max_retries=0,  # LMClient's RetryPolicy retries
                    timeout=self.timeout,
                    **self._http_client_kw(),
                )
                entry = self._clients[loop] = (client, _closes_with_loop(client))
                fresh = True
            else:
                fresh = False
        if fresh:
            await entry[1].__anext__()
        return entry[0]

    def _http_client_kw(self) -> dict[str, Any]:
        if self.http_backend == "aiohttp":
            # About half the CPU per call of the default httpx transport (matters at high
            # concurrency); openai ships the adapter, aiohttp must be installed.
            return {"http_client": openai.DefaultAioHttpClient(timeout=self.timeout)}
        return {}

    async def aclose(self) -> None:
        """Close the HTTP client of the running loop (a loop ended by asyncio.run closes its own)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.pop(loop, None)
        if entry is not None:
            await entry[1].aclose()

    # -- the call --------------------------------------------------------------------------
    async def complete(self, request: LMRequest) -> Completion:
        texts, usage = await collect_samples(request, lambda n, seed: self._fetch(request, n, seed))
        return Completion(texts=texts, usage=usage, model=self.model)

    async def _fetch(self, request: LMRequest, n: int, seed: int | None) -> tuple[list[str], Usage]:
        body = {**self.extra_body, **chat_arguments(request, self.model, n, seed, schema=self.supports_schema)}
        data = await self._send(body)
        texts = self._texts(data)
        return texts, self._usage(data, request, texts)

    async def _send(self, body: dict[str, Any]) -> Any:
        secret = self._secret()
        try:
            client = await self._client()
            # The SDK's documented raw-request method: same auth, errors and timeouts as
            # chat.completions.create, without its per-call parameter transform and response
            # model, which cost a third of the client's CPU per call (this path is hot).
            return await client.post("/chat/completions", body=body, cast_to=object)
        except openai.APIStatusError as exc:
            err = error_for_status(
                exc.status_code, secret.redact(server_message(exc.body, exc.message)),
                model=self.model, endpoint=self.base_url, key_env=self.api_key_env,
                key_set=bool(secret.value), retry_after=parse_retry_after(exc.response.headers),
                code=getattr(exc, "code", None),
            )
        except openai.APITimeoutError as exc:
            if could_not_connect(exc):
                err = LMConnectionError(f"connecting to {self.base_url} timed out after {self.timeout:g} s",
                                        server=self.base_url)
            else:
                err = LMTransientError(f"{self.base_url} timed out after {self.timeout:g} s")
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            said = secret.redact(f"{type(cause).__name__}: {cause}")
            if "header" in str(cause).lower() and "illegal" in str(cause).lower():
                # the request itself is malformed (e.g. a header from the environment): retrying cannot help
                err = LMPermanentError(f"could not send a request to {self.base_url}: {said}; "
                                       f"check {self.api_key_env} and other settings")
            elif could_not_connect(exc):
                err = LMConnectionError(f"connection to {self.base_url} failed: {said}", server=self.base_url)
            else:
                err = LMTransientError(f"connection to {self.base_url} failed: {said}")
        except (openai.APIResponseValidationError, ValueError) as exc:
            # A body that is not the JSON it claims to be (ValueError covers JSONDecodeError).
            err = LMTransientError(secret.redact(
                f"malformed response from {self.base_url}: {type(exc).__name__}: {exc}"[:500]))
        # Raised outside the except blocks, so no chained cause carries the server's raw text.
        raise err

    def _texts(self, data: Any) -> list[str]:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            raise LMTransientError(f"malformed response from {self.base_url}: no choices")
        texts = []
        for choice in sorted(choices, key=_choice_index):
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                raise LMTransientError(f"malformed response from {self.base_url}: a choice has no message")
            content = message.get("content")
            texts.append(content if isinstance(content, str) else "")
        return texts

    def _usage(self, data: dict[str, Any], request: LMRequest, texts: list[str]) -> Usage:
        usage = data.get("usage")
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int):
                return Usage(prompt, completion)
        return self._estimated_usage(request, texts)

    def _estimated_usage(self, request: LMRequest, texts: list[str]) -> Usage:
        if self.estimated_usage_calls == 0:
            log.warning("%s reports no token usage for %s; estimating ~4 characters per token",
                        self.base_url, self.model)
        self.estimated_usage_calls += 1
        return estimated_usage(request, texts)

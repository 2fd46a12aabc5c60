"""Any hosted chat API (OpenAI, Anthropic, Gemini, Mistral, ...) through ``litellm``.

    >>> from flowbot.lm import LMClient
    >>> from flowbot.lm.litellm_provider import LiteLLMProvider
    >>> lm = LMClient(LiteLLMProvider("anthropic/claude-3-5-haiku-latest"))
    >>> # await lm.complete([{"role": "user", "content": "2+2?"}])

litellm is an optional extra (``pip install 'flowbot[hosted]'``) and slow to import (seconds), so
it is imported on first use, in a worker thread so the event loop keeps running. Keys come from
the environment only: litellm reads each vendor's usual variable (``ANTHROPIC_API_KEY`` ...), or
``api_key_env`` names one. Like every provider, this makes one attempt per call; LMClient retries.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from typing import Any

from flowbot.errors import FlowBotError
from flowbot.lm.base import (Completion, LMConnectionError, LMPermanentError, LMRequest, LMTransientError, Provider,
                             Usage, could_not_connect)
from flowbot.lm.openai_compat import (
    PLACEHOLDER_KEY,
    chat_arguments,
    collect_samples,
    error_for_status,
    estimated_usage,
    parse_retry_after,
    server_message,
)
from flowbot.lm.redact import clean_key, environment_secrets, redact

MISSING_EXTRA = "hosted models need litellm: pip install 'flowbot[hosted]'"

_import_lock = threading.Lock()


def import_litellm() -> Any:
    """Import litellm without its network fetch of the price map; a clear error when missing."""
    with _import_lock:
        # Use the price map bundled with litellm instead of downloading one at import time.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import litellm
        except ImportError:
            raise LMPermanentError(MISSING_EXTRA) from None
        # Stops litellm printing "Give Feedback / Get Help" banners on every exception.
        litellm.suppress_debug_info = True
        return litellm


def _secret_values(extra: str | None) -> list[str]:
    """Strings to scrub from error text: our key plus any key-like environment value."""
    return ([extra] if extra else []) + environment_secrets()


def _malformed_header(exc: BaseException) -> bool:
    """The request could not be built: a header (usually the key) holds an illegal character."""
    for _ in range(10):  # a bounded walk down the chain of causes
        if exc is None:
            return False
        text = str(exc).lower()
        if "illegal header" in text or "invalid header" in text:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


# litellm prefixes messages with "litellm.NotFoundError: NotFoundError: OpenAIException - ".
_LITELLM_PREFIX = re.compile(r"^(litellm\.\w+: )?(\w+Error: )?(\w+Exception - )?")


def _redact(text: str, secrets: list[str]) -> str:
    return redact(text, secrets)  # every form of each key: stripped, repr- and JSON-escaped, ...


class LiteLLMProvider(Provider):
    """Chat completions through ``litellm.acompletion`` with litellm's own retries turned off.

    Args:
        model: a litellm model name, e.g. ``"gpt-4o-mini"``, ``"anthropic/claude-3-5-haiku-latest"``,
            or ``"openai/<name>"`` with ``api_base`` for an OpenAI-compatible server.
        api_base: override the vendor's endpoint.
        api_key_env: read the key from this variable instead of litellm's per-vendor default.
        timeout: seconds for one attempt.
        price_per_token: (input, output) dollars per token; default: litellm's price map.
        extra: more keyword arguments for ``litellm.acompletion`` (never put keys here).
        supports_schema: whether the model enforces the ``response_format`` (``json_schema``,
            strict) sent for a request's JSON schema; default: litellm's model map says
            (``litellm.supports_response_schema``; False for models it does not know). The schema
            is sent either way; when this is False, callers check replies.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 600.0,
        max_concurrency: int = 8,
        price_per_token: tuple[float, float] | None = None,
        extra: dict[str, Any] | None = None,
        supports_schema: bool | None = None,
    ) -> None:
        if not model:
            raise FlowBotError("LiteLLMProvider needs a model name")
        self._supports_schema = supports_schema
        self.model = model
        self.api_base = api_base
        if api_key_env is None and api_base and model.startswith("openai/"):
            api_key_env = "OPENAI_API_KEY"  # an OpenAI-compatible server: same rule as OpenAICompatProvider
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.extra = dict(extra or {})
        self._price = price_per_token
        self._price_looked_up = price_per_token is not None
        self._litellm: Any = None
        #: calls whose usage the server did not report, so tokens were estimated
        self.estimated_usage_calls = 0

    def __repr__(self) -> str:
        base = f", api_base={self.api_base!r}" if self.api_base else ""
        env = f", api_key_env={self.api_key_env!r}" if self.api_key_env else ""
        return f"LiteLLMProvider(model={self.model!r}{base}{env})"

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (the Ray backend ships providers to its workers): the copy imports litellm again."""
        return {**self.__dict__, "_litellm": None}

    @property
    def _endpoint(self) -> str:
        return self.api_base or f"the {self.model.split('/', 1)[0]} API"

    def _module(self) -> Any:
        if self._litellm is None:
            self._litellm = import_litellm()
        return self._litellm

    @property
    def supports_schema(self) -> bool:  # type: ignore[override]
        """Whether replies are held to the schema: the constructor's word, else litellm's model map."""
        if self._supports_schema is None:
            try:
                self._supports_schema = bool(self._module().supports_response_schema(model=self.model))
            except Exception:  # litellm missing, or a model its map lacks: not known to enforce it
                self._supports_schema = False
        return self._supports_schema

    def price_per_token(self) -> tuple[float, float] | None:
        """litellm's (input, output) dollars per token for this model, or None when unknown."""
        if not self._price_looked_up:
            self._price = self._lookup_price()
            self._price_looked_up = True
        return self._price

    def _lookup_price(self) -> tuple[float, float] | None:
        try:
            info = self._module().get_model_info(self.model)
        except Exception:  # litellm raises a bare Exception for models it has no entry for
            return None  # (and LMPermanentError when litellm is missing: the price is unknown)
        cost_in, cost_out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
        if cost_in is None or cost_out is None:
            return None
        return float(cost_in), float(cost_out)

    # -- the call --------------------------------------------------------------------------
    async def complete(self, request: LMRequest) -> Completion:
        if self._litellm is None:
            self._litellm = await asyncio.to_thread(import_litellm)
        texts, usage = await collect_samples(request, lambda n, seed: self._fetch(request, n, seed))
        return Completion(texts=texts, usage=usage, model=self.model)

    def _key(self) -> str | None:
        raw = os.environ.get(self.api_key_env) if self.api_key_env else None
        return clean_key(raw, self.api_key_env) if raw and self.api_key_env else raw

    async def _fetch(self, request: LMRequest, n: int, seed: int | None) -> tuple[list[str], Usage]:
        kwargs: dict[str, Any] = {
            **self.extra,
            **chat_arguments(request, self.model, n, seed),
            "timeout": self.timeout,
            "num_retries": 0,  # LMClient's RetryPolicy retries
            "max_retries": 0,
            "drop_params": True,  # a vendor without `seed` or `n` ignores it instead of failing
        }
        if self.api_base:
            kwargs["api_base"] = self.api_base
        key = self._key()
        if key:
            kwargs["api_key"] = key
        elif self.api_key_env and self.api_base:
            kwargs["api_key"] = PLACEHOLDER_KEY  # local servers ignore the key but the client needs one
        try:
            response = await self._litellm.acompletion(**kwargs)
            err = None
        except Exception as exc:
            err = self._map_error(exc, key)
        if err is not None:
            raise err  # outside the except block: no chained cause carries the raw server text
        texts = self._texts(response)
        return texts, self._usage(response, request, texts)

    def _map_error(self, exc: Exception, key: str | None) -> Exception:
        import openai  # litellm's exceptions subclass openai's

        secrets = _secret_values(key)
        if isinstance(exc, LMPermanentError):
            return exc
        if isinstance(exc, openai.APITimeoutError):
            if could_not_connect(exc):
                return LMConnectionError(f"connecting to {self._endpoint} timed out after {self.timeout:g} s",
                                         server=str(self._endpoint))
            return LMTransientError(f"{self._endpoint} timed out after {self.timeout:g} s")
        if isinstance(exc, openai.APIConnectionError) and _malformed_header(exc):
            return LMPermanentError(_redact(
                f"could not send a request to {self._endpoint}: {exc}; an API key in the environment "
                "may hold a line break or space (check the key variable)"[:500], secrets))
        if isinstance(exc, openai.APIConnectionError):
            text = _redact(f"connection to {self._endpoint} failed: {exc}"[:500], secrets)
            if could_not_connect(exc):
                return LMConnectionError(text, server=str(self._endpoint))
            return LMTransientError(text)
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            said = server_message(getattr(exc, "body", None), getattr(exc, "message", str(exc)))
            said = _LITELLM_PREFIX.sub("", said)
            return error_for_status(
                status, _redact(said, secrets),
                model=self.model, endpoint=self._endpoint, key_env=self.api_key_env or self._key_hint(),
                key_set=bool(key) if self.api_key_env else True,
                retry_after=parse_retry_after(self._headers(exc)), code=getattr(exc, "code", None),
            )
        if isinstance(exc, (ValueError, KeyError, AttributeError)):
            return LMTransientError(_redact(
                f"malformed response from {self._endpoint}: {type(exc).__name__}: {exc}"[:500], secrets))
        if isinstance(exc, openai.OpenAIError):  # e.g. no key configured: retrying cannot help
            return LMPermanentError(_redact(f"litellm could not call {self.model!r}: {exc}"[:500], secrets))
        return exc

    def _key_hint(self) -> str | None:
        """The variable litellm expects for this model (e.g. ANTHROPIC_API_KEY), when it knows."""
        try:
            missing = self._module().validate_environment(self.model).get("missing_keys") or []
        except Exception:
            return None
        return " or ".join(missing) or None

    @staticmethod
    def _headers(exc: Exception) -> Any:
        headers = getattr(exc, "litellm_response_headers", None)
        if headers:
            return headers
        response = getattr(exc, "response", None)
        return getattr(response, "headers", None)

    def _texts(self, response: Any) -> list[str]:
        choices = getattr(response, "choices", None)
        if not choices:
            raise LMTransientError(f"malformed response from {self._endpoint}: no choices")
        return [(getattr(getattr(c, "message", None), "content", None) or "") for c in choices]

    def _usage(self, response: Any, request: LMRequest, texts: list[str]) -> Usage:
        usage = getattr(response, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        if isinstance(prompt, int) and isinstance(completion, int):
            return Usage(prompt, completion)
        self.estimated_usage_calls += 1
        return estimated_usage(request, texts)

"""Injected failures for the test server (:class:`~flowbot.testing.server.OpenAITestServer`): HTTP
errors as providers send them, slow and dropped answers, malformed bodies, empty replies.

    >>> Fault.rate_limit(retry_after=2)
    Fault(kind='http', status=429, message='Rate limit reached', retry_after=2, delay_s=0.0, code=None)
    >>> Fault.quota().code
    'insufficient_quota'
"""

from __future__ import annotations

from dataclasses import dataclass

#: the reason phrase of each status the server sends
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 408: "Request Timeout", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Fault:
    """One injected failure. Build with the class methods, e.g. ``Fault.http(503)``."""

    kind: str  # "http" | "slow" | "invalid_json" | "missing_choices" | "drop" | "empty" | "echo_headers"
    status: int = 200
    message: str = ""
    retry_after: float | str | None = None  # sent verbatim as the Retry-After header
    delay_s: float = 0.0
    code: str | None = None  # the error body's "code", e.g. "insufficient_quota"

    @classmethod
    def http(cls, status: int, message: str = "", retry_after: float | str | None = None,
             code: str | None = None) -> "Fault":
        """An error status with an OpenAI-style error body."""
        return cls("http", status=status, message=message or REASONS.get(status, "error"),
                   retry_after=retry_after, code=code)

    @classmethod
    def rate_limit(cls, retry_after: float | str | None = None) -> "Fault":
        return cls.http(429, "Rate limit reached", retry_after)

    @classmethod
    def slow(cls, delay_s: float) -> "Fault":
        """Answer normally, but only after ``delay_s`` extra seconds (beyond a client timeout)."""
        return cls("slow", delay_s=delay_s)

    @classmethod
    def invalid_json(cls) -> "Fault":
        """Status 200 with a truncated JSON body."""
        return cls("invalid_json")

    @classmethod
    def missing_choices(cls) -> "Fault":
        """Status 200 with valid JSON that has no ``choices``."""
        return cls("missing_choices")

    @classmethod
    def drop(cls) -> "Fault":
        """Close the connection after reading the request, without any response."""
        return cls("drop")

    @classmethod
    def empty(cls) -> "Fault":
        """Status 200 and a well-formed answer whose every choice has empty content."""
        return cls("empty")

    @classmethod
    def echo_headers(cls, status: int = 500) -> "Fault":
        """An error whose message repeats the request's headers verbatim (Authorization too),
        as a misconfigured proxy does: tests check that clients redact the key from it."""
        return cls("echo_headers", status=status)

    @classmethod
    def bad_key(cls) -> "Fault":
        return cls.http(401, "Incorrect API key provided", code="invalid_api_key")

    @classmethod
    def unknown_model(cls) -> "Fault":
        return cls.http(404, "The model does not exist", code="model_not_found")

    @classmethod
    def context_too_long(cls) -> "Fault":
        return cls.http(400, "This model's maximum context length is 4096 tokens",
                        code="context_length_exceeded")

    @classmethod
    def quota(cls) -> "Fault":
        return cls.http(429, "You exceeded your current quota", code="insufficient_quota")

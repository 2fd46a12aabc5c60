"""Retries with exponential backoff and full jitter for transient LM failures."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

from flowbot.lm.base import LMConnectionError, LMPermanentError, LMTransientError, LMUnreachable

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """``max_attempts`` tries in all; the wait before try *k* is uniform in [0, min(cap, base·2^k)]
    (full jitter, so many clients hitting one rate limit spread out), and at least the server's
    ``Retry-After`` when it sent one. Permanent errors (bad key, unknown model) are never retried.
    When no attempt could even connect, the server is unreachable: :class:`LMUnreachable` (a
    permanent error, so an evaluation stops there instead of scoring every example 0)."""

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0  # a server's Retry-After is honoured up to this many seconds
    attempt_timeout: float | None = 300.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.max_delay, self.base_delay * (2**attempt))
        wait = self.rng.uniform(0, cap)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait

    async def run(
        self,
        attempt_fn: Callable[[], Awaitable[T]],
        on_retry: Callable[[int, Exception], None] | None = None,
    ) -> T:
        last: Exception | None = None
        connected = False  # did any attempt reach the server?
        for attempt in range(self.max_attempts):
            try:
                if self.attempt_timeout is None:
                    return await attempt_fn()
                return await asyncio.wait_for(attempt_fn(), self.attempt_timeout)
            except LMPermanentError:
                raise
            except (LMTransientError, asyncio.TimeoutError, TimeoutError) as exc:
                last = exc
                connected = connected or not isinstance(exc, LMConnectionError)
                if attempt + 1 >= self.max_attempts:
                    break
                if on_retry is not None:
                    on_retry(attempt, exc)
                await asyncio.sleep(self.delay(attempt, getattr(exc, "retry_after", None)))
        if isinstance(last, LMConnectionError) and not connected:
            # Nothing gets through to this server: every later call would fail the same way.
            where = last.server or "the server"
            raise LMUnreachable(
                f"cannot reach {where}: none of {self.max_attempts} attempts could connect ({last}); "
                "check that the server is running and the base URL (--base-url)") from last
        if isinstance(last, (asyncio.TimeoutError, TimeoutError)):
            raise LMTransientError(
                f"no answer within {self.attempt_timeout:g} s after {self.max_attempts} attempts"
            ) from last
        raise LMTransientError(f"gave up after {self.max_attempts} attempts: {last}") from last

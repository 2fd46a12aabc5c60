"""Usage meter (per role) and budgets (calls, tokens, dollars, seconds) that stop a run cleanly.

A budget is checked *before* each paid call and counts calls as soon as they start, so a run
never overshoots a call cap, and overshoots a token or dollar cap by at most the calls already in
flight. Budgets nest: a child budget (say, one candidate's share) also charges its parents.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from flowbot.errors import FlowBotError
from flowbot.lm.base import BudgetExceeded, Usage


@dataclass
class RoleUsage:
    calls: int = 0  # paid calls (cache misses) that returned, including replayed ones
    replayed_calls: int = 0  # of those, paid in an earlier session of this run (free now)
    cached_calls: int = 0  # served entirely from the cache
    failed_calls: int = 0  # gave up after retries
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    priced: bool = True  # False once any paid call had an unknown price

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "replayed_calls": self.replayed_calls,
            "cached_calls": self.cached_calls,
            "failed_calls": self.failed_calls,
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6) if self.priced else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RoleUsage":
        cost = d.get("cost_usd")
        return cls(
            calls=d.get("calls", 0),
            replayed_calls=d.get("replayed_calls", 0),
            cached_calls=d.get("cached_calls", 0),
            failed_calls=d.get("failed_calls", 0),
            retries=d.get("retries", 0),
            prompt_tokens=d.get("prompt_tokens", 0),
            completion_tokens=d.get("completion_tokens", 0),
            cost_usd=cost or 0.0,
            priced=cost is not None,
        )

    def add(self, other: "RoleUsage") -> None:
        """Count ``other`` in this one (priced only while both are)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.priced = self.priced and other.priced


#: the counters of a RoleUsage (every field but ``priced``)
_COUNTS = ("calls", "replayed_calls", "cached_calls", "failed_calls", "retries", "prompt_tokens",
           "completion_tokens", "cost_usd")


def total_usage(by_role: dict[str, RoleUsage]) -> RoleUsage:
    """All roles together."""
    total = RoleUsage()
    for usage in by_role.values():
        total.add(usage)
    return total


class UsageMeter:
    """Counts what each role (``task``, ``optimizer``, ``judge`` ...) used. Thread- and task-safe."""

    def __init__(self) -> None:
        self._by_role: dict[str, RoleUsage] = {}
        self._lock = threading.Lock()

    def _role(self, role: str) -> RoleUsage:
        return self._by_role.setdefault(role, RoleUsage())

    def record_paid(self, role: str, usage: Usage, replayed: bool = False) -> None:
        with self._lock:
            r = self._role(role)
            r.calls += 1
            r.replayed_calls += int(replayed)
            r.prompt_tokens += usage.prompt_tokens
            r.completion_tokens += usage.completion_tokens
            if usage.cost_usd is None:
                r.priced = r.priced and usage.total_tokens == 0
            else:
                r.cost_usd += usage.cost_usd

    def record_cached(self, role: str) -> None:
        with self._lock:
            self._role(role).cached_calls += 1

    def record_failure(self, role: str) -> None:
        with self._lock:
            self._role(role).failed_calls += 1

    def record_retry(self, role: str) -> None:
        with self._lock:
            self._role(role).retries += 1

    def merge(self, usage: dict[str, RoleUsage]) -> None:
        """Add usage counted elsewhere (e.g. by a remote worker's meter) to this meter."""
        with self._lock:
            for role, u in usage.items():
                self._role(role).add(u)

    def snapshot(self) -> dict[str, RoleUsage]:
        with self._lock:
            return {k: RoleUsage(**vars(v)) for k, v in self._by_role.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {k: v.to_dict() for k, v in self.snapshot().items()}

    def total(self) -> RoleUsage:
        return total_usage(self.snapshot())


@dataclass
class BudgetLimits:
    max_calls: int | None = None
    max_tokens: int | None = None
    max_usd: float | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and not (isinstance(value, (int, float)) and value >= 0 and value == value):
                raise FlowBotError(f"must be a number of at least 0, got {value!r}", where=f"budget {name}")

    def is_unlimited(self) -> bool:
        return all(v is None for v in vars(self).values())

    def describe(self) -> str:
        parts = []
        if self.max_calls is not None:
            parts.append(f"{self.max_calls} calls")
        if self.max_tokens is not None:
            parts.append(f"{self.max_tokens:,} tokens")
        if self.max_usd is not None:
            parts.append(f"${self.max_usd:g}")
        if self.max_seconds is not None:
            parts.append(f"{self.max_seconds:g} s")
        return " / ".join(parts) if parts else "unlimited"


@dataclass
class _Spent:
    calls: int = 0
    tokens: int = 0
    usd: float = 0.0


class Budget:
    """Caps on paid LM work across all roles. ``check()`` raises :class:`BudgetExceeded`.

    >>> b = Budget(max_calls=2)
    >>> b.start_call(); b.finish_call(Usage(10, 5))
    >>> b.remaining_calls()
    1
    """

    def __init__(
        self,
        max_calls: int | None = None,
        max_tokens: int | None = None,
        max_usd: float | None = None,
        max_seconds: float | None = None,
        *,
        parent: "Budget | None" = None,
        name: str = "run",
        clock=time.monotonic,
    ) -> None:
        self.limits = BudgetLimits(max_calls, max_tokens, max_usd, max_seconds)
        self.parent = parent
        self.name = name
        self.spent = _Spent()
        self._in_flight = 0
        self._clock = clock
        self._started = clock()
        self._seconds_before = 0.0  # time spent in earlier sessions of a resumed run
        # one lock for the whole tree: a call changes the counters of every ancestor
        self._lock = parent._lock if parent is not None else threading.RLock()
        self._stop_conditions: list[Callable[[], str | None]] = []

    def add_stop_condition(self, condition: Callable[[], str | None]) -> None:
        """``condition()`` returns a reason to stop (e.g. a stop file appeared) or None."""
        self._stop_conditions.append(condition)

    # -- queries -------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._seconds_before + (self._clock() - self._started)

    def _own_reason(self) -> str | None:
        lim, s = self.limits, self.spent
        if lim.max_calls is not None and s.calls + self._in_flight >= lim.max_calls:
            return f"{self.name} budget of {lim.max_calls} calls is used up"
        if lim.max_tokens is not None and s.tokens >= lim.max_tokens:
            return f"{self.name} budget of {lim.max_tokens:,} tokens is used up"
        if lim.max_usd is not None and s.usd >= lim.max_usd:
            return f"{self.name} budget of ${lim.max_usd:g} is used up"
        if lim.max_seconds is not None and self.elapsed() >= lim.max_seconds:
            return f"{self.name} time budget of {lim.max_seconds:g} s is used up"
        for condition in self._stop_conditions:
            reason = condition()
            if reason:
                return reason
        return None

    def exhausted_reason(self) -> str | None:
        b: Budget | None = self
        while b is not None:
            reason = b._own_reason()
            if reason:
                return reason
            b = b.parent
        return None

    @property
    def exhausted(self) -> bool:
        return self.exhausted_reason() is not None

    def check(self) -> None:
        reason = self.exhausted_reason()
        if reason:
            raise BudgetExceeded(reason)

    def remaining_calls(self) -> int | None:
        vals = []
        b: Budget | None = self
        while b is not None:
            if b.limits.max_calls is not None:
                vals.append(b.limits.max_calls - b.spent.calls - b._in_flight)
            b = b.parent
        return min(vals) if vals else None

    def fraction_used(self) -> float:
        """The largest used fraction of any own limit (0 when unlimited)."""
        lim, s = self.limits, self.spent
        fr = [0.0]
        if lim.max_calls:
            fr.append(s.calls / lim.max_calls)
        if lim.max_tokens:
            fr.append(s.tokens / lim.max_tokens)
        if lim.max_usd:
            fr.append(s.usd / lim.max_usd)
        if lim.max_seconds:
            fr.append(self.elapsed() / lim.max_seconds)
        return max(fr)

    # -- accounting ----------------------------------------------------------------------
    def start_call(self) -> None:
        """Reserve one call (raises if no budget is left). Pair with finish_call/abort_call."""
        with self._lock:
            self.check()
            b: Budget | None = self
            while b is not None:
                b._in_flight += 1
                b = b.parent

    def finish_call(self, usage: Usage) -> None:
        with self._lock:
            b: Budget | None = self
            while b is not None:
                b._in_flight -= 1
                b.spent.calls += 1
                b.spent.tokens += usage.total_tokens
                b.spent.usd += usage.cost_usd or 0.0
                b = b.parent

    def abort_call(self) -> None:
        """A reserved call failed before any tokens were billed."""
        with self._lock:
            b: Budget | None = self
            while b is not None:
                b._in_flight -= 1
                b = b.parent

    def child(self, name: str, **limits: Any) -> "Budget":
        return Budget(**limits, parent=self, name=name, clock=self._clock)

    def charge(self, calls: int, tokens: int, usd: float) -> None:
        """Count work already done elsewhere (remote workers checked it against a mirror, see
        :meth:`mirror`) here and in every ancestor, without checking."""
        with self._lock:
            b: Budget | None = self
            while b is not None:
                b.spent.calls += calls
                b.spent.tokens += tokens
                b.spent.usd += usd
                b = b.parent

    def mirror(self) -> list[dict[str, Any]]:
        """This budget and its ancestors as they stand (limits, spend, calls in flight, elapsed
        time), as plain data: :meth:`from_mirror` rebuilds them elsewhere (a remote process checks
        calls against the copy). Stop conditions are not copied: the owner relays them."""
        chain: list[dict[str, Any]] = []
        with self._lock:
            b: Budget | None = self
            while b is not None:
                chain.append({"name": b.name, "limits": vars(b.limits).copy(), "in_flight": b._in_flight,
                              "state": {**b.state(), "seconds": b.elapsed()}})
                b = b.parent
        return chain

    @classmethod
    def from_mirror(cls, chain: list[dict[str, Any]]) -> "Budget":
        copy: Budget | None = None
        for level in reversed(chain):  # root first, so each copy gets its parent
            copy = cls(**level["limits"], parent=copy, name=level["name"])
            copy.restore(level["state"])
            copy._in_flight = level["in_flight"]
        assert copy is not None, "an empty budget chain"
        return copy

    # -- persistence (resume) ------------------------------------------------------------
    def resume_time(self, seconds: float) -> None:
        """Count ``seconds`` spent in earlier sessions of a resumed run against ``max_seconds``
        (calls and tokens come back by replaying the cache; time does not)."""
        self._seconds_before = max(0.0, float(seconds))

    def state(self) -> dict[str, Any]:
        return {"calls": self.spent.calls, "tokens": self.spent.tokens, "usd": self.spent.usd,
                "seconds": self.elapsed()}

    def restore(self, state: dict[str, Any]) -> None:
        self.spent = _Spent(state.get("calls", 0), state.get("tokens", 0), state.get("usd", 0.0))
        self._seconds_before = float(state.get("seconds", 0.0))
        self._started = self._clock()

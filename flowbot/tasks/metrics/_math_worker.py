"""math-verify checks, in this process or as a worker process speaking JSON lines.

Run as a script (by path, so it imports nothing of flowbot), it reads one request per line on
stdin, ``{"pred": ..., "gold": ..., "timeout": ...}``, and answers ``{"equal": true|false}`` on
stdout. It first writes ``{"ready": true}`` once math-verify is imported. It exits when stdin
closes, so it never outlives its parent. Running in its own main thread, math-verify's
``signal.alarm`` timeouts work here even when the caller is a worker thread.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def _parse(answer: str, timeout: int) -> list[Any]:
    """math-verify's parse of a bare answer; prose with its own ``$...$`` is parsed as it is."""
    from math_verify import parse

    s = answer.strip()
    if s.startswith("$") and s.endswith("$") and "$" not in s.strip("$"):
        s = s.strip("$")
    wrapped = parse(f"${s}$", parsing_timeout=timeout) if "$" not in s else []
    if any(not isinstance(x, str) for x in wrapped):
        return wrapped
    raw = parse(s, parsing_timeout=timeout)
    if any(not isinstance(x, str) for x in raw):
        return raw
    return wrapped or raw


def verify_answers(pred: str, gold: str, timeout: int) -> bool:
    """math-verify's verdict on two bare answers; must run in a main thread (alarm timeouts)."""
    from math_verify import verify

    try:
        gold_parsed = _parse(gold, timeout)
        pred_parsed = _parse(pred, timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # bad LaTeX, SymPy errors, timeouts: not shown to be equal
        return False


def main() -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # a stray print must not corrupt the protocol
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (import once, before saying ready)

    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            equal = verify_answers(str(request["pred"]), str(request["gold"]), int(request["timeout"]))
        except Exception:
            equal = False
        out.write(json.dumps({"equal": equal}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

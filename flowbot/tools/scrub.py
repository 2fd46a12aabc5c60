"""Blanking this process's secrets in ``/proc/<pid>/environ``, before sandboxed code runs.

A sandboxed child gets an environment built from scratch, but on a level without a PID
namespace it can still read its parent's ``/proc/<pid>/environ``: the environment FlowBot was
started with, API keys included. That file shows the memory block the kernel filled at ``exec``;
:func:`scrub_environ_block` overwrites the values of key-like variables (``*_API_KEY``,
``*_TOKEN``, ...) there in place, and hands the C library's environment a fresh copy of each
(``os.putenv``), so ``os.environ``, ``getenv`` and child processes keep working unchanged.

It writes only when the block it reads back matches ``/proc/self/environ`` byte for byte, so an
unexpected layout is left alone (and reported as not scrubbed). Linux only; elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import os
import sys

from flowbot.lm.redact import SECRET_SUFFIXES


def _env_bounds() -> tuple[int, int] | None:
    """(env_start, env_end) of this process, from /proc/self/stat fields 50 and 51."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()  # fields[0] is field 3 (state)
    if len(fields) < 49:
        return None
    return int(fields[47]), int(fields[48])


def secret_names(environ: dict[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return [k for k, v in env.items() if k.upper().endswith(SECRET_SUFFIXES) and v.strip()]


def scrub_environ_block() -> list[str]:
    """Blank the values of key-like variables in this process's initial environment block;
    returns the names scrubbed (empty when there were none, or on another OS)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        with open("/proc/self/environ", "rb") as f:
            visible = f.read()
        bounds = _env_bounds()
    except OSError:
        return []
    if bounds is None or bounds[1] <= bounds[0]:
        return []
    start, end = bounds
    block = ctypes.string_at(start, end - start)
    if block.rstrip(b"\0") != visible.rstrip(b"\0"):
        return []  # not the layout we expect: do not write anything
    scrubbed = []
    offset = 0
    for entry in block.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if eq and value.strip() and name.decode("utf-8", "replace").upper().endswith(SECRET_SUFFIXES):
            ctypes.memset(start + offset + len(name) + 1, ord("*"), len(value))
            key = name.decode("utf-8", "surrogateescape")
            if key in os.environ:
                os.putenv(key, os.environ[key])  # libc's environ now points at a private copy
            scrubbed.append(key)
        offset += len(entry) + 1
    return scrubbed

"""Run untrusted (LLM-written) Python in a child process with layered limits.

Example::

    res = await run_python("print(sum(range(10)))", timeout_s=5)
    assert res.stdout == "45\\n" and res.ok

Three isolation levels exist; ``isolation="auto"`` picks the strongest one the host supports
(:func:`sandbox_info` says which, and why not more), and ``isolation="strict"`` refuses to run
code without a real boundary (``"namespaces"`` or ``"bwrap"``). ``$FLOWBOT_SANDBOX`` (``auto``,
``strict`` or a level; ``flowbot --sandbox`` sets it) says what ``"auto"`` means for a process.

``"namespaces"`` (Linux, running as root, kernel allows ``unshare``: the case on FlowBot's own
machines and CI). A small launcher (``_sandbox_launch.py``) makes new mount, network, PID, UTS
and IPC namespaces and then the kernel enforces, whatever the code does inside Python:

* network: the new network namespace has no interface up, so every connect fails;
* filesystem: the root is a fresh tmpfs (``pivot_root``, old root unmounted) holding only
  read-only binds of the system library dirs (``/usr``, ``/lib*``, ``/bin``...) and the Python
  installation, five ``/dev`` nodes, ``/proc`` of the new PID namespace, and the working dir
  ``/sandbox`` (a tmpfs of ``disk_mb``; also ``$HOME`` and ``$TMPDIR``). Everything else
  (``/etc/passwd``, ``/root``, ``/tmp``, the project, other users' files) is not there. The
  working dir vanishes with the namespace;
* identity: a fresh uid/gid drawn per run from a range no account uses, no supplementary
  groups, every capability dropped (bounding set emptied) and ``no_new_privs``, so the code
  cannot write the read-only binds, raise its hard limits, signal processes outside the run,
  ptrace anything, or leave the namespaces;
* processes: ``RLIMIT_NPROC`` counts the tasks of that per-run uid, so a fork bomb stops at
  ``max_processes``; the run's init process is PID 1 of the namespace, so when it ends (or is
  killed) the kernel kills every process left in the run;
* resources: ``RLIMIT_AS`` (per process, so the total is at most ``max_processes * memory_mb``),
  ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no core dumps, and the tmpfs sizes.

``"bwrap"`` (a non-root host with bubblewrap installed, Debian's ``bubblewrap``, and user
namespaces allowed): the same kernel boundary built by ``bwrap`` without root: new user, mount,
network, PID, UTS and IPC namespaces, every capability dropped, a read-only root holding only the
system library dirs and the Python installation, a fresh ``/dev`` and ``/proc``, and a tmpfs
``/sandbox`` of ``disk_mb`` (also ``/dev/shm``); ``RLIMIT_NPROC`` counts the run's own user
namespace, so it bounds the run's processes; the PID namespace dies with the run. Run as root
(chosen explicitly; ``auto`` prefers ``"namespaces"`` there), no user namespace is made: in one, the
run's processes would still be root's outside it, which the kernel exempts from ``RLIMIT_NPROC`` (a
fork bomb once outran the supervisor's sampling there and the host ran out of memory). Instead the
stub empties the capability bounding set and becomes a fresh per-run uid, as ``"namespaces"`` does.

``"process"`` (any other host): **no boundary** — a child process running as the parent's user
in a host temp dir, with the same rlimits (``RLIMIT_NPROC`` only for a non-root user, set to the
user's current count plus ``max_processes``). File, network and program rules come only from the
audit guard below, which code can switch off. FlowBot says so in a warning the first time it uses
this level. Its launcher is a *child subreaper*, so a ``fork`` + ``setsid`` child cannot outlive
the run; the code runs in a process group of its own and the guard refuses to signal the launcher,
and should the code (guard switched off) kill it anyway, the run's processes are still found and
killed by their environment (each holds the run's unique ``HOME``) -- unless the code also
replaced its environment, which only a process that starts a program with a new one can do.

Both levels add, inside the child interpreter, an *audit guard* (``sys.addaudithook``, on by
default, ``_sandbox_boot.py``): reading outside the working dir and the Python install, writing
outside the working dir, sockets other than local ``socketpair``s, ``subprocess``/``os.system``/
``exec*``/``posix_spawn``, forks beyond ``max_processes`` (and any fork from a forked child),
symlinks/hard links, signals to processes outside the run (and to the "process" level's launcher),
``setrlimit``, ``gc`` referrer/object walks, ``ctypes`` library loading, symbol lookup, foreign
calls and raw-address reads, and imports of sub-interpreter and test modules all raise
``PermissionError``/``ImportError``. The guard is a tripwire for accidents and naive code, **not a
security boundary**: code in the same interpreter can defeat it on purpose (the reliability
battery does, six ways: the hook's own functions reached through a traceback's frames or a
``__fspath__`` it calls, then rewritten or their closure cells replaced; raw memory access through
``ctypes`` pointer objects -- ``ctypes`` stays importable because sympy needs it; monkeypatching
stdlib internals the guard calls, such as ``os.fspath`` or ``posixpath``; also malformed bytecode,
C extensions that open files without audit events, racing a path check from a thread). On ``"namespaces"`` that leaves the kernel limits above intact; on
``"process"`` nothing else stands behind it.

Always, whatever the level: a minimal environment built from scratch (no variable of the parent
leaks into the child), the values of key-like variables blanked in FlowBot's own
``/proc/<pid>/environ`` before the first child starts (:mod:`flowbot.tools.scrub`), totals per run
sampled by the supervisor every 50 ms (:mod:`flowbot.tools.proctree`): resident memory of all the
run's processes against ``memory_mb``, their number against ``max_processes``, and on
``"process"`` the working dir's size against ``disk_mb`` (reasons ``memory_limit``,
``process_limit``, ``disk_limit``); every process of the run killed when it ends; output read
with a cap (the run is killed once a stream passes ``max_output_bytes``), a wall-clock timeout
after which every process of the run gets SIGKILL, a
watchdog thread in the child that ends the run if the parent dies, no zombie left behind
(asyncio reaps the child; the namespace init reaps or kills the rest), and every wait on the
child bounded: a run always returns, and anything unusual (say, an exit asyncio never reported)
is described in ``SandboxResult.note``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import marshal
import math
import os
import secrets
import shutil
import signal
import site
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from flowbot.errors import FlowBotError
from flowbot.tools.proctree import RunWatch, kill_tree, kill_with_environ

log = logging.getLogger(__name__)

Isolation = Literal["auto", "strict", "namespaces", "bwrap", "process"]
LEVELS = ("namespaces", "bwrap", "process")
POLICY_ENV = "FLOWBOT_SANDBOX"
#: how often the supervisor samples a run's totals
WATCH_INTERVAL_S = 0.05

#: working directory seen by the code on the "namespaces" level (a tmpfs)
NS_WORKDIR = "/sandbox"
_DONE = b"done"  # written by the child's bootstrap to the status pipe once the code has finished


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int  # negative: killed by that signal (like subprocess)
    timed_out: bool  # the run used up its time (see ran_out_of_time)
    #: why a limit stopped the run: "timeout", "output_limit", "cpu_limit", "memory_limit"
    #: (a MemoryError ended it, or the run's processes together passed memory_mb),
    #: "process_limit", "disk_limit", "killed" (SIGKILL not sent by the parent) or None
    killed_reason: str | None
    truncated: bool  # stdout or stderr was cut at max_output_bytes
    duration_s: float
    completed: bool = False  # the code ran to its end (no exception, no exit(), no kill)
    isolation: str = ""  # the level actually used
    #: anything unusual the supervisor had to do, e.g. an exit status read from the kernel
    #: because asyncio never reported it ("" on a normal run; also logged as a warning)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.completed and not self.timed_out


class SandboxUnavailable(RuntimeError):
    """The requested isolation level cannot be provided on this host."""


# --------------------------------------------------------------------------------------------
# Child-side programs: stdlib-only files of this package, passed as text to ``python -c`` (the
# child cannot import flowbot). Read once per process (a harmless module-level cache).

_STUB = "import sys;exec(compile(sys.argv[1],'<flowbot-sandbox>','exec'))"
_SOURCES: dict[str, str] = {}


def _source(name: str) -> str:
    """A stub's text for ``python -c``, after the privilege drop both stubs share (neither can
    import anything of flowbot's, so the shared code travels as text)."""
    if name not in _SOURCES:
        here = os.path.dirname(os.path.abspath(__file__))
        parts = []
        for part in ("_sandbox_privileges.py", name):
            with open(os.path.join(here, part), encoding="utf-8") as f:
                parts.append(f.read())
        _SOURCES[name] = "\n".join(parts)
    return _SOURCES[name]


# --------------------------------------------------------------------------------------------
# Host capabilities (probed once per process: a documented, harmless module-level cache).


@dataclass(frozen=True)
class _Host:
    namespaces: bool
    reason: str  # why namespaces are not available ("" when they are)
    uid_range: tuple[int, int]  # per-run uids are drawn from [lo, hi)
    bwrap: str = ""  # path of a working bubblewrap ("" when unusable)
    bwrap_reason: str = ""  # why bwrap is not available ("" when it is)


_HOST_CACHE: dict[str, _Host] = {}


def _id_range(map_file: str) -> tuple[int, int] | None:
    """A range of ids usable in this user namespace, away from ids real users have."""
    try:
        with open(map_file, encoding="ascii") as f:
            extents = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except OSError:
        return None
    for inside, _outside, count in extents:
        lo, hi = max(inside, 1_000_000), min(inside + count, 2**31 - 2)
        if hi - lo >= 4096:
            return lo, hi
    return None


def _static_host_check() -> _Host:
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return _Host(False, "not Linux", (0, 0))
    if os.geteuid() != 0:
        return _Host(False, "not running as root", (0, 0))
    uids, gids = _id_range("/proc/self/uid_map"), _id_range("/proc/self/gid_map")
    if uids is None or gids is None:
        return _Host(False, "no free uid/gid range in this user namespace", (0, 0))
    lo, hi = max(uids[0], gids[0]), min(uids[1], gids[1])
    if hi - lo < 4096:
        return _Host(False, "uid and gid ranges do not overlap", (0, 0))
    return _Host(True, "", (lo, hi))


async def _host() -> _Host:
    key = sys.executable
    if key in _HOST_CACHE:
        return _HOST_CACHE[key]
    host = _static_host_check()
    if host.namespaces:  # check that the kernel lets us use them
        res = await _execute("print('ok')", _Spec(), host, "namespaces")
        if res.stdout != "ok\n" or not res.completed:
            detail = (res.stderr.strip().splitlines() or ["no output"])[-1]
            host = _Host(False, f"namespace probe failed: {detail}", (0, 0))
    host = await _probe_bwrap(host)
    _HOST_CACHE[key] = host
    return host


async def _probe_bwrap(host: _Host) -> _Host:
    path = shutil.which("bwrap") if sys.platform.startswith("linux") else None
    if not path:
        return dataclasses.replace(host, bwrap_reason="bubblewrap is not installed (apt install bubblewrap)")
    trial = dataclasses.replace(host, bwrap=path)
    res = await _execute("print('ok')", _Spec(), trial, "bwrap")
    if res.stdout == "ok\n" and res.completed:
        return trial
    detail = (res.stderr.strip().splitlines() or ["no output"])[-1]
    return dataclasses.replace(host, bwrap_reason=f"bwrap probe failed: {detail[:200]}")


def _strongest(host: _Host) -> str | None:
    return "namespaces" if host.namespaces else "bwrap" if host.bwrap else None


def _no_boundary_reason(host: _Host) -> str:
    return f"namespaces: {host.reason}; bwrap: {host.bwrap_reason}"


async def sandbox_info() -> dict[str, str]:
    """Which isolation ``"auto"`` gives on this host, and why not more: ``{"isolation", "reason",
    "boundary"}`` (``boundary`` is ``"yes"`` for a kernel boundary, ``"no"`` for "process")."""
    host = await _host()
    best = _strongest(host)
    reason = "" if best == "namespaces" else (host.reason if best == "bwrap" else _no_boundary_reason(host))
    return {"isolation": best or "process", "reason": reason, "boundary": "yes" if best else "no"}


async def sandbox_levels() -> dict[str, str]:
    """Each level and why this host cannot give it ("" when it can)."""
    host = await _host()
    return {"namespaces": "" if host.namespaces else host.reason,
            "bwrap": "" if host.bwrap else host.bwrap_reason, "process": ""}


_WARNED: set[str] = set()  # warned once per process (a harmless module-level record)


def _choose_level(isolation: Isolation, host: _Host) -> str:
    """The level a run uses: the requested one, or what the policy picks ("auto"/"strict")."""
    policy = isolation
    if policy == "auto":
        policy = os.environ.get(POLICY_ENV, "auto").strip().lower() or "auto"  # type: ignore[assignment]
        if policy not in ("auto", "strict", *LEVELS):
            raise FlowBotError(f"${POLICY_ENV} must be auto, strict, namespaces, bwrap or process, got {policy!r}")
    if policy == "namespaces" and not host.namespaces:
        raise SandboxUnavailable(f"namespace isolation is unavailable: {host.reason}")
    if policy == "bwrap" and not host.bwrap:
        raise SandboxUnavailable(f"bwrap isolation is unavailable: {host.bwrap_reason}")
    if policy in LEVELS:
        if policy == "process" and _claim_warning():  # chosen on purpose, and still said (once)
            how = "requested" if isolation == "process" else f"--sandbox process / ${POLICY_ENV}=process"
            log.warning("%s", _no_boundary_message(host, how))
        return policy
    best = _strongest(host)
    if best is not None:
        return best
    if policy == "strict":
        raise SandboxUnavailable("sandbox policy 'strict': this host has no isolation boundary for generated "
                                 f"code ({_no_boundary_reason(host)}); refusing to run it")
    if _claim_warning():
        log.warning("%s", _no_boundary_message(host, "auto"))
    return "process"


def _claim_warning() -> bool:
    """True the first time in this process: the no-boundary warning is said once."""
    if "process" in _WARNED:
        return False
    _WARNED.add("process")
    return True


def _no_boundary_message(host: _Host, how: str) -> str:
    """The warning for the "process" level, picked by "auto" or chosen ``how``."""
    risk = ("LLM-written code runs as your user, stopped only by an audit guard that code can switch off: it could "
            "read your files and reach the network.")
    if how == "auto":
        return (f"sandbox: NO ISOLATION BOUNDARY on this host ({_no_boundary_reason(host)}). {risk} Install "
                "bubblewrap (apt install bubblewrap), run as root, or use --sandbox strict to refuse.")
    best = _strongest(host)
    fix = (f"This host has the '{best}' level: leave the sandbox at auto to use it." if best else
           f"This host has no boundary ({_no_boundary_reason(host)}): install bubblewrap (apt install bubblewrap) "
           "or run as root.")
    return f"sandbox: NO ISOLATION BOUNDARY: the 'process' level was chosen ({how}). {risk} {fix}"


async def no_boundary_warning(how: str) -> str | None:
    """The warning for code run at the "process" level chosen ``how`` (e.g. "--sandbox process"),
    the first time it is asked for or due in this process; None once it has been said."""
    host = await _host()
    return _no_boundary_message(host, how) if _claim_warning() else None


# --------------------------------------------------------------------------------------------
# Building the child's command line.


@dataclass(frozen=True)
class _Spec:
    stdin: str = ""
    timeout_s: float = 10.0
    memory_mb: int = 512
    max_output_bytes: int = 64_000
    max_processes: int = 16
    disk_mb: int = 64
    audit_guard: bool = True
    run_name: str = "__main__"


def _python_binary() -> str:
    return os.path.realpath(sys.executable)


def _site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    dirs = [paths.get("purelib", ""), paths.get("platlib", "")]
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # some embedded/virtualenv site modules lack it
        pass
    out: list[str] = []
    for d in dirs:
        if d and os.path.isdir(d) and d not in out:
            out.append(d)
    return out


def _python_read_roots() -> list[str]:
    paths = sysconfig.get_paths()
    roots = [paths.get("stdlib", ""), paths.get("platstdlib", ""), *_site_dirs()]
    roots += [os.path.join(sys.base_prefix, "lib"), os.path.dirname(_python_binary())]
    return _dedupe_dirs([os.path.realpath(r) for r in roots if r and os.path.isdir(r)])


def _dedupe_dirs(dirs: list[str]) -> list[str]:
    """Drop dirs that sit inside another listed dir."""
    out: list[str] = []
    for d in sorted(set(dirs), key=len):
        if not any(d == o or d.startswith(o.rstrip("/") + "/") for o in out):
            out.append(d)
    return out


def _python_mounts() -> list[str]:
    dirs = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(_python_binary()), *_python_read_roots()]
    return _dedupe_dirs([os.path.realpath(d) for d in dirs if d and os.path.isdir(d)])


_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
                 "/etc/ld.so.cache", "/etc/localtime")
_DEVICES = ("null", "zero", "full", "random", "urandom")


def _plan_entries() -> list[tuple[str, str, str]]:
    """What the new root holds: (kind, host path, symlink target) with kind dir/file/symlink/dev."""
    system = [p for p in _SYSTEM_PATHS if os.path.lexists(p)]
    paths = _dedupe_dirs(system) + [p for p in _python_mounts() if not _covered(p, system)]
    entries: list[tuple[str, str, str]] = []
    for path in paths:
        if os.path.islink(path):
            entries.append(("symlink", path, os.readlink(path)))
        elif os.path.isdir(path):
            entries.append(("dir", path, ""))
        elif os.path.isfile(path):
            entries.append(("file", path, ""))
    entries += [("dev", f"/dev/{d}", "") for d in _DEVICES if os.path.exists(f"/dev/{d}")]
    return entries


def _covered(path: str, by: list[str]) -> bool:
    return any(path == b or path.startswith(b.rstrip("/") + "/") for b in by)


def _child_env(work: str) -> dict[str, str]:
    # Built from scratch: nothing of the parent's environment (API keys...) reaches the child.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "HOME": work, "TMPDIR": work, "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8",
        "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }


def _pack(obj: dict[str, object]) -> str:
    # marshal (built into every interpreter, unlike json) keeps the child's start-up short; both
    # ends are the same interpreter, so the format matches
    return marshal.dumps(obj).hex()


def _child_config(spec: _Spec, work: str, code_path: str, status_fd: int, per_uid: bool,
                  reaper: bool = False, uid: int | None = None) -> str:
    """The boot stub's config; with ``uid`` the stub becomes that user (from root) before the code runs."""
    mb = 1024 * 1024
    cpu = int(math.ceil(spec.timeout_s)) + 1
    rlimits = {  # name: (soft, hard)
        "RLIMIT_AS": (spec.memory_mb * mb,) * 2,
        "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        "RLIMIT_FSIZE": (spec.disk_mb * mb,) * 2,
        "RLIMIT_NOFILE": (256, 256),
        "RLIMIT_CORE": (0, 0),
    }
    if per_uid:  # only meaningful when the uid is ours alone (and not root)
        rlimits["RLIMIT_NPROC"] = (spec.max_processes + 2,) * 2  # + main process + watchdog
    elif os.geteuid() != 0:  # the user's own count plus the run's share (root ignores it)
        rlimits["RLIMIT_NPROC"] = (_user_threads() + spec.max_processes + 2,) * 2
    return _pack({
        "reaper": reaper,
        "work": work, "code_path": code_path, "status_fd": status_fd, "rlimits": rlimits,
        "guard": spec.audit_guard, "max_forks": spec.max_processes,
        "deadline_s": spec.timeout_s + 2.0, "run_name": spec.run_name, "uid": uid,
        "site_dirs": [os.path.realpath(d) for d in _site_dirs()], "read_roots": _python_read_roots(),
        "read_files": ["/dev/null", "/dev/urandom", "/dev/random", "/dev/zero", "/etc/localtime"],
    })


# --------------------------------------------------------------------------------------------
# Running.


async def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    max_output_bytes: int = 64_000,
    max_processes: int = 16,
    disk_mb: int = 64,
    isolation: Isolation = "auto",
    audit_guard: bool = True,
    run_name: str = "__main__",
) -> SandboxResult:
    """Run ``code`` as a fresh Python program in the sandbox and return what it printed.

    ``timeout_s`` is wall-clock time for the whole run (start-up included); ``memory_mb`` is the
    address-space limit of each process and the limit of all the run's processes together;
    ``max_processes`` bounds processes/threads; ``disk_mb`` bounds each written file and the
    working dir. ``run_name`` is the ``__name__`` the code runs under (another name keeps its
    ``if __name__ == "__main__":`` blocks inert). The run never raises for anything the code
    does; bad arguments raise ``ValueError``, an unavailable level (or ``"strict"`` on a host
    without a boundary) raises :class:`SandboxUnavailable`.

    >>> import asyncio
    >>> res = asyncio.run(run_python("import sys; print(sys.stdin.read().upper())", stdin="hi"))
    >>> res.stdout
    'HI\\n'
    """
    if not isinstance(code, str):
        raise ValueError(f"code must be a string, got {type(code).__name__}")
    for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb),
                        ("max_output_bytes", max_output_bytes), ("max_processes", max_processes),
                        ("disk_mb", disk_mb)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if isolation not in ("auto", "strict", *LEVELS):
        raise ValueError(f"isolation must be 'auto', 'strict', 'namespaces', 'bwrap' or 'process', got {isolation!r}")
    spec = _Spec(stdin, float(timeout_s), int(memory_mb), int(max_output_bytes),
                 int(max_processes), int(disk_mb), bool(audit_guard), str(run_name))
    return await _run(code, spec, isolation)


async def _run(code: str, spec: _Spec, isolation: Isolation) -> SandboxResult:
    host = await _host()
    return await _execute(code, spec, host, _choose_level(isolation, host))


_SCRUBBED: list[str] = []  # key-like variables blanked in /proc/self/environ (done once per process)


def _scrub_once() -> None:
    if not _SCRUBBED:
        from flowbot.tools.scrub import scrub_environ_block

        _SCRUBBED.append(",".join(scrub_environ_block()) or "-")


async def _execute(code: str, spec: _Spec, host: _Host, level: str) -> SandboxResult:
    run_dir = tempfile.mkdtemp(prefix="flowbot-sbx-")
    status_r, status_w = os.pipe()
    os.set_blocking(status_r, False)
    start = time.monotonic()
    collector = _Collector(spec.max_output_bytes)
    transport: asyncio.SubprocessTransport | None = None
    marker: bytes | None = None  # "process" level: the environment entry every process of the run has
    try:
        code_path = os.path.join(run_dir, "main.py")
        with open(code_path, "w", encoding="utf-8") as f:
            f.write(code)
        _scrub_once()
        try:
            argv, cwd, work, uid = _command(spec, host, level, run_dir, code_path, status_w)
            if level == "process":  # (no namespace holds the run: its unique HOME names its processes)
                marker = b"HOME=" + os.fsencode(work)
            transport, _ = await asyncio.get_running_loop().subprocess_exec(
                lambda: collector, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=_child_env(work), cwd=cwd,
                start_new_session=True, pass_fds=(status_w,))
        finally:
            os.close(status_w)
        watch = RunWatch(transport.get_pid(), uid=uid, work_dir=work if level == "process" else None)
        result = await _supervise(transport, collector, spec, shell_codes=True, watch=watch, marker=marker)
        result.completed = _read_status(status_r) and not result.timed_out
        result.isolation = level
        result.duration_s = time.monotonic() - start
        return result
    finally:
        if transport is not None:
            if not collector.exited.is_set():  # cancelled, or no exit seen: leave nothing running
                _kill_run(transport.get_pid(), marker)
            else:
                _kill_group(transport.get_pid())  # whatever of its group is left
                if marker is not None:  # and a process whose launcher was killed under it
                    kill_with_environ(marker)
            transport.close()  # closes the pipes (and reaps an exited child asyncio did not report)
        os.close(status_r)
        await asyncio.to_thread(shutil.rmtree, run_dir, True)


def _command(spec: _Spec, host: _Host, level: str, run_dir: str, code_path: str,
             status_w: int) -> tuple[list[str], str, str, int | None]:
    """The child's argv, cwd, working dir (as the code sees it) and the uid its processes run
    as when that identifies them (else None), for this isolation level."""
    python = _python_binary()
    boot = [python, "-S", "-s", "-B", "-c", _STUB, _source("_sandbox_boot.py")]
    if level == "namespaces":
        work = NS_WORKDIR
        cfg = _child_config(spec, work, work + "/main.py", status_w, per_uid=True)
        uid = _fresh_uid(host)
        plan = {
            "new_root": os.path.join(run_dir, "root"), "work": work, "code_path": code_path,
            "parent_pid": os.getpid(), "uid": uid,
            "disk_mb": spec.disk_mb, "entries": _plan_entries(), "env": _child_env(work),
            "argv": [*boot, cfg],
        }
        os.mkdir(plan["new_root"])
        return [python, "-S", "-s", "-B", "-c", _STUB, _source("_sandbox_launch.py"), _pack(plan)], run_dir, work, uid
    if level == "bwrap":
        work = NS_WORKDIR
        # as root: no user namespace (root's processes are exempt from RLIMIT_NPROC whatever uid they
        # have inside one); the stub becomes a fresh uid instead, so a fork bomb meets the limit
        uid = _fresh_uid(host) if os.geteuid() == 0 and host.uid_range[1] > host.uid_range[0] else None
        cfg = _child_config(spec, work, work + "/main.py", status_w, per_uid=True, uid=uid)
        return [*_bwrap_args(host.bwrap, spec, code_path, work, uid), "--", *boot, cfg], run_dir, work, uid
    work = os.path.join(run_dir, "work")
    os.mkdir(work, 0o700)
    cfg = _child_config(spec, work, code_path, status_w, per_uid=False, reaper=True)
    return [*boot, cfg], work, work, None


def _fresh_uid(host: _Host) -> int:
    """A uid no account uses, drawn per run (its processes are the run's alone)."""
    return host.uid_range[0] + secrets.randbelow(host.uid_range[1] - host.uid_range[0])


def _bwrap_args(bwrap: str, spec: _Spec, code_path: str, work: str, uid: int | None = None) -> list[str]:
    """bubblewrap's options: namespaces, a read-only root of system and Python dirs, a tmpfs work dir.
    With ``uid`` (bwrap run as root): every namespace but the user's, and of all capabilities only
    the three the stub needs to empty the bounding set and become ``uid``; none is left after."""
    size = str(spec.disk_mb * 1024 * 1024)
    if uid is None:
        args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if os.geteuid() == 0:  # (no per-run uid range here) nobody inside its own user namespace
            args += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
    else:
        args = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    entries = _plan_entries()
    writable = ["--perms", "1777"] if uid is not None else []  # the stub's new uid writes there
    if uid is not None:  # bwrap makes a bind's missing parents private to root: the new uid could not pass
        args += _open_parents(path for kind, path, _ in entries if kind in ("dir", "file", "symlink"))
    for kind, path, target in entries:
        if kind == "symlink":
            args += ["--symlink", target, path]
        elif kind in ("dir", "file"):
            args += ["--ro-bind", path, path]
    args += ["--dev", "/dev", *writable, "--size", size, "--tmpfs", "/dev/shm", "--proc", "/proc",
             *writable, "--size", size, "--tmpfs", work, "--ro-bind", code_path, work + "/main.py",
             "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", work]
    return args


def _open_parents(paths: Iterable[str]) -> list[str]:
    """bwrap options creating every missing parent dir of ``paths`` world-searchable (0755)."""
    paths = list(paths)
    parents = {str(p) for path in paths for p in Path(path).parents if str(p) != "/"} - set(paths)
    return [arg for d in sorted(parents, key=lambda d: d.count("/")) for arg in ("--perms", "0755", "--dir", d)]


def _read_status(fd: int) -> bool:
    try:
        return os.read(fd, 64) == _DONE
    except BlockingIOError:
        return False


#: after the SIGKILL, how long asyncio may take to report the exit before we ask the kernel
_EXIT_GRACE_S = 5.0
#: how long the output pipes may stay open once the process is gone (a straggler holds them)
_PIPE_GRACE_S = 1.0


class _Collector(asyncio.SubprocessProtocol):
    """Keeps the first ``cap`` bytes of stdout and stderr, and flags the exit and the pipes' EOF.

    Past the cap it goes on *reading* and discarding: a pipe nobody reads never reports EOF,
    and asyncio only finishes a subprocess once all its pipes are closed. (With
    ``create_subprocess_exec`` streams, a reader that stopped at the cap left the stream's
    buffer full, its transport paused, and ``Process.wait()`` pending forever.)
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.output = {1: bytearray(), 2: bytearray()}
        self.truncated = False
        self.overflow = asyncio.Event()
        self.exited = asyncio.Event()
        self.pipes_closed = asyncio.Event()
        self._open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buf = self.output[fd]
        room = self.cap - len(buf)
        if len(data) > room:
            buf += data[:room]
            self.truncated = True
            self.overflow.set()
        else:
            buf += data

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open:
            self.pipes_closed.set()

    def process_exited(self) -> None:
        self.exited.set()


async def _supervise(transport: asyncio.SubprocessTransport, out: _Collector, spec: _Spec,
                     shell_codes: bool, watch: RunWatch | None = None, marker: bytes | None = None) -> SandboxResult:
    """Feed stdin, enforce the clock, the output cap and the run's totals, and collect the result;
    every wait is bounded. ``marker``: an environment entry naming the run's processes (see _kill_run)."""
    pid = transport.get_pid()
    _feed(transport, spec.stdin.encode("utf-8"))
    reason: str | None = None
    over = asyncio.Event()
    why: list[str] = []
    monitor = asyncio.ensure_future(_watch_totals(watch, spec, over, why)) if watch is not None else None
    try:
        await _first_set((out.exited, out.overflow, over), spec.timeout_s)
    finally:
        if monitor is not None:
            monitor.cancel()
    if not out.exited.is_set():
        reason = why[0] if why else "output_limit" if out.overflow.is_set() else "timeout"
        _kill_run(pid, marker)
    returncode, note = await _wait_exit(transport, out, pid)
    # The pipes reach EOF once every process holding them is gone; stragglers are killed.
    if not await _first_set((out.pipes_closed,), _PIPE_GRACE_S):
        _kill_run(pid, marker)
        if not await _first_set((out.pipes_closed,), _PIPE_GRACE_S):
            note = _join(note, "output pipes still open after the run; closed them")
    if note:
        log.warning("sandbox: %s", note)
    exit_code = _exit_code(returncode, shell_codes)
    err_text = out.output[2].decode("utf-8", "replace")
    reason = reason or _limit_reason(exit_code, err_text)
    return SandboxResult(
        stdout=out.output[1].decode("utf-8", "replace"), stderr=err_text, exit_code=exit_code,
        timed_out=ran_out_of_time(reason), killed_reason=reason, truncated=out.truncated, duration_s=0.0,
        note=note)


def ran_out_of_time(reason: str | None) -> bool:
    """Whether a run ended for ``reason`` used up its time: the wall clock, or the CPU limit that
    backs it in the kernel (a second more than the timeout; it ends a run first when the supervisor is
    starved of CPU or the code burns several cores).

    >>> ran_out_of_time("timeout"), ran_out_of_time("cpu_limit"), ran_out_of_time("memory_limit")
    (True, True, False)
    """
    return reason in ("timeout", "cpu_limit")


async def _first_set(events: tuple[asyncio.Event, ...], timeout: float) -> bool:
    """Wait until one of ``events`` is set or ``timeout`` passes; True when one is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    return any(e.is_set() for e in events)


async def _wait_exit(transport: asyncio.SubprocessTransport, out: _Collector, pid: int) -> tuple[int | None, str]:
    """The exit status, and a note when asyncio did not report it in time (then ask the kernel)."""
    if await _first_set((out.exited,), _EXIT_GRACE_S):
        return transport.get_returncode(), ""
    status = _peek_exit(pid)
    if isinstance(status, int):  # a zombie nobody reaped: transport.close() reaps it
        return status, f"asyncio did not report the exit of pid {pid}; status read from the kernel"
    if status == "reaped":
        return transport.get_returncode(), f"pid {pid} was reaped but asyncio did not report its exit"
    return None, f"pid {pid} was still running {_EXIT_GRACE_S:g} s after SIGKILL; gave up waiting"


def _peek_exit(pid: int) -> int | str:
    """The exit status of our exited child ``pid`` *without reaping it* (asyncio's watcher may
    still wait for it), like ``Popen.returncode``; or "running", "reaped" or "unknown"."""
    if not hasattr(os, "waitid"):  # e.g. macOS
        return "unknown"
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return "reaped"
    if info is None or info.si_pid == 0:
        return "running"
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _exit_code(returncode: int | None, shell_codes: bool) -> int:
    # Every launcher (namespaces, bwrap, the process-level reaper) reports a child killed by
    # signal N as exit status 128+N.
    rc = -signal.SIGKILL if returncode is None else returncode
    if shell_codes and 128 < rc <= 128 + 64:
        return -(rc - 128)
    return rc


def _limit_reason(exit_code: int, stderr: str) -> str | None:
    if exit_code == -signal.SIGXCPU:
        return "cpu_limit"
    if exit_code == -signal.SIGKILL:
        return "killed"  # hard CPU limit, the kernel's OOM killer or the child's watchdog
    last = stderr.strip().splitlines()[-1:] or [""]
    if exit_code != 0 and last[0].startswith("MemoryError"):
        return "memory_limit"
    return None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the child leads its own session and group
    except (ProcessLookupError, PermissionError):
        pass


def _kill_run(pid: int, marker: bytes | None = None) -> None:
    """Every process of the run: the tree below the child (a detached one is re-parented to the
    run's subreaper, so it is still in the tree), then the child's process group, then (``marker``,
    on "process") any process still holding the run's environment entry: one detached after its
    subreaper was killed is outside the tree."""
    kill_tree(pid)
    _kill_group(pid)
    if marker is not None:
        kill_with_environ(marker)


async def _watch_totals(watch: RunWatch, spec: _Spec, over: asyncio.Event, why: list[str]) -> None:
    """Sample the run until it ends; on passing a total, record the reason and set ``over``.
    A lone process is left to its own rlimits (RLIMIT_AS), which report a MemoryError."""
    memory, disk = spec.memory_mb * 1024 * 1024, spec.disk_mb * 1024 * 1024
    await asyncio.sleep(0.01)
    while True:
        try:
            s = watch.sample(max_processes=spec.max_processes + 1)
        except OSError:  # /proc unreadable: nothing to watch on this host
            return
        if s.processes > spec.max_processes + 1:
            why.append("process_limit")
        elif s.processes > 1 and s.memory > memory:
            why.append("memory_limit")
        elif s.disk > disk:
            why.append("disk_limit")
        if why:
            over.set()
            return
        await asyncio.sleep(WATCH_INTERVAL_S)


def _user_threads() -> int:
    """Threads of this user on the host: what RLIMIT_NPROC counts against."""
    uid, total = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)
        try:
            if int(fields[b"Uid"].split()[0]) == uid:
                total += int(fields[b"Threads"])
        except (KeyError, ValueError, IndexError):
            continue
    return total


def _feed(transport: asyncio.SubprocessTransport, data: bytes) -> None:
    """Hand stdin to the pipe and close it; the transport writes in the background (a child that
    never reads just gets EPIPE on its end, which the transport swallows)."""
    stdin = transport.get_pipe_transport(0)
    if stdin is None:
        return
    if data:
        stdin.write(data)
    stdin.close()

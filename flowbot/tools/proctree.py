"""The process tree of one sandbox run, read from ``/proc``: which processes it has, how much memory
they hold together, and killing all of them.

The kernel has no per-run total for memory or processes without cgroups, so the sandbox's
supervisor samples the tree (:class:`RunWatch`) and stops a run that goes over its totals. A scan
of ``/proc`` costs about a millisecond per hundred processes on the host.

    >>> import os
    >>> os.getpid() in descendants(os.getppid(), parents())
    True
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _read(path: str, size: int = 4096) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def parents() -> dict[int, int]:
    """pid -> parent pid of every process on the host (those that vanish mid-scan are skipped)."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry[0].isdigit():
            continue
        try:
            stat = _read(f"/proc/{entry}/stat", 512)
            end = stat.rindex(b")")
            out[int(entry)] = int(stat[end + 4:stat.index(b" ", end + 4)])
        except (OSError, ValueError):
            continue
    return out


def descendants(root: int, ppid: dict[int, int]) -> list[int]:
    """``root`` and every process below it, parents before children."""
    children: dict[int, list[int]] = {}
    for pid, parent in ppid.items():
        children.setdefault(parent, []).append(pid)
    order, stack = [], [root] if root in ppid else []
    while stack:
        pid = stack.pop()
        order.append(pid)
        stack.extend(children.get(pid, ()))
    return order


def memory_bytes(pid: int) -> int:
    """The process's proportional resident memory (PSS: shared pages split among sharers), or its
    resident set when ``smaps_rollup`` is unavailable; 0 once it is gone."""
    try:
        for line in _read(f"/proc/{pid}/smaps_rollup", 8192).splitlines():
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return int(_read(f"/proc/{pid}/statm", 256).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def comm(pid: int) -> str:
    try:
        return _read(f"/proc/{pid}/comm", 64).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def kill_tree(root: int, rounds: int = 100) -> int:
    """Kill ``root`` and every process below it; returns how many were signalled.

    The processes below are first stopped (SIGSTOP, repeated until a scan finds nothing new), so a
    fork bomb cannot outgrow the killing, then all get SIGKILL, top down: the first one killed in
    a PID-namespace run is its init, which takes the whole namespace with it. ``root`` goes last,
    since on the "process" level it is the subreaper that keeps detached processes in the tree.
    """
    stopped: set[int] = set()
    for _ in range(rounds):
        new = [p for p in descendants(root, parents()) if p != root and p not in stopped]
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
            stopped.add(pid)
    killed = 0
    for _ in range(rounds):
        below = [p for p in descendants(root, parents()) if p != root]
        if not below:
            break
        killed += sum(_signal(pid, signal.SIGKILL) for pid in below)
    return killed + _signal(root, signal.SIGKILL)


def _signal(pid: int, sig: int) -> int:
    try:
        os.kill(pid, sig)
        return 1
    except (ProcessLookupError, PermissionError):
        return 0


def with_environ(entry: bytes, skip: int | None = None) -> list[int]:
    """Pids (but ``skip``) of processes whose environment holds ``entry`` (``b"NAME=value"``), as
    ``/proc/<pid>/environ`` shows it; processes this user cannot read are left out."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == skip:
            continue
        try:
            block = _read(f"/proc/{name}/environ", 1 << 16)
        except OSError:
            continue
        if entry in block.split(b"\0"):
            found.append(int(name))
    return found


def kill_with_environ(entry: bytes, rounds: int = 50) -> int:
    """SIGKILL every process whose environment holds ``entry``, until a scan finds none (a forking
    process cannot outrun it for long: each round kills what the last scan saw); returns how many."""
    killed = 0
    for _ in range(rounds):
        pids = with_environ(entry, skip=os.getpid())
        if not pids:
            break
        killed += sum(_signal(pid, signal.SIGKILL) for pid in pids)
    return killed


def dir_bytes(path: str, max_entries: int = 20_000) -> tuple[int, int]:
    """(bytes allocated, entries seen) under ``path``, stopping after ``max_entries``."""
    total, seen, stack = 0, 0, [path]
    while stack and seen < max_entries:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    seen += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total, seen


@dataclass
class Sample:
    processes: int
    memory: int  # bytes
    disk: int  # bytes (0 when the work dir is not watched)


class RunWatch:
    """Samples one run: its processes (excluding the launcher processes named in ``skip``, and
    for ``uid`` runs only that uid's), their memory, and optionally a work dir's size."""

    def __init__(self, root: int, *, skip_root: bool = True, uid: int | None = None,
                 skip_comms: tuple[str, ...] = ("bwrap",), work_dir: str | None = None) -> None:
        self.root = root
        self.skip_root = skip_root
        self.uid = uid
        self.skip_comms = skip_comms
        self.work_dir = work_dir
        self.peak = Sample(0, 0, 0)

    def members(self) -> list[int]:
        pids = descendants(self.root, parents())
        if self.skip_root:
            pids = [p for p in pids if p != self.root]
        if self.uid is not None:
            pids = [p for p in pids if owner(p) == self.uid]
        if self.skip_comms:
            pids = [p for p in pids if comm(p) not in self.skip_comms]
        return pids

    def sample(self, max_processes: int | None = None) -> Sample:
        """The run's totals now; past ``max_processes`` only the count (memory would be slow to sum)."""
        pids = self.members()
        if max_processes is not None and len(pids) > max_processes:
            return Sample(len(pids), 0, 0)
        disk = dir_bytes(self.work_dir)[0] if self.work_dir else 0
        s = Sample(len(pids), sum(memory_bytes(p) for p in pids), disk)
        self.peak = Sample(max(self.peak.processes, s.processes), max(self.peak.memory, s.memory),
                           max(self.peak.disk, s.disk))
        return s

"""Child-side bootstrap of the sandbox: *not* imported by flowbot.

``flowbot.tools.sandbox`` passes this file's text to ``python -S -s -B -c`` (compiled under the
file name ``<flowbot-sandbox>``) with a config dict as ``sys.argv[2]`` (marshalled, hex-encoded:
marshal is built in, so start-up spends no time importing json). It sets the resource
limits, starts a watchdog thread, installs the audit guard, then runs ``main.py`` from the
working dir as the ``__main__`` (or configured) module. Stdlib only: the child cannot see flowbot.

With ``reaper`` set (the "process" level, which has no PID namespace), it first forks: the parent
half never runs the code; it is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), so a process the
code detaches (``fork`` + ``setsid`` + exit) is re-parented to it instead of to init, and when the
code's process ends, or the run's deadline passes, or FlowBot goes away, it kills every process
left below it before exiting with the code's status (a signal S as 128+S, like a shell). The code
runs in a process group of its own, and the guard refuses to signal the reaper; should the code
kill it anyway (guard switched off), FlowBot finds the run's processes by their environment.

The audit guard is a tripwire against accidents and naive code, not a security boundary; see
the module docstring of ``flowbot.tools.sandbox`` for what it can and cannot stop.
"""

import marshal
import os
import sys

BOOT_FILE = "<flowbot-sandbox>"


def set_limits(rlimits):
    import resource

    for name, (soft, hard) in rlimits.items():
        res = getattr(resource, name)
        cur = resource.getrlimit(res)[1]
        if cur != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur), min(hard, cur)
        resource.setrlimit(res, (soft, hard))


def start_watchdog(fd, seconds):
    """Kill the run when the parent goes away (POLLERR on our end of its pipe) or at the deadline.

    A backstop behind the parent's own timeout: a thread the sandboxed code cannot stop.
    """
    import select
    import threading
    import time

    def watch():
        poller = select.poll()
        poller.register(fd, select.POLLERR | select.POLLHUP)
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                if poller.poll(left * 1000):
                    break
            except Exception:
                break
        try:
            os.killpg(0, 9)
        finally:
            os._exit(137)

    threading.Thread(target=watch, name="flowbot-watchdog", daemon=True).start()


def install_guard(cfg, main_pid, protected=()):
    import _posixsubprocess

    def no_fork_exec(*args, **kwargs):
        raise PermissionError("starting programs is not allowed in the sandbox")

    _posixsubprocess.fork_exec = no_fork_exec  # it raises no audit event of its own
    sys.addaudithook(make_hook(cfg["work"], cfg["read_roots"], cfg["read_files"], cfg["max_forks"], main_pid,
                               protected))


def make_hook(work, read_roots, read_files, max_forks, main_pid, protected=()):
    # Everything the hook uses is bound here, so later monkeypatching of modules or builtins by
    # the sandboxed code does not swap these references (their internals can still be patched).
    realpath, isabs, join, getcwd = os.path.realpath, os.path.isabs, os.path.join, os.getcwd
    fspath, fsdecode, getpgid, getpid = os.fspath, os.fsdecode, os.getpgid, os.getpid
    _type, _str, _int, _bytes, _any, _abs = type, str, int, bytes, any, abs
    _PermissionError, _ImportError = PermissionError, ImportError
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    work_prefix = (work.rstrip("/") + "/",)
    read_prefixes = tuple(r.rstrip("/") + "/" for r in read_roots) + work_prefix
    read_files = frozenset(read_files) | {work}
    write_files = frozenset((work, "/dev/null"))
    os_open_files = frozenset((work, "/dev/null", "/dev/urandom"))
    forks = [0]
    protected = frozenset(protected)  # the launcher (subreaper) of the run: never signalled by the code
    denied = frozenset((
        "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile", "subprocess.Popen",
        "pty.spawn", "os.symlink", "os.link", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "sys._current_frames", "sys._current_exceptions",
        "resource.setrlimit", "resource.prlimit", "ctypes.dlsym", "ctypes.dlsym/handle",
        "ctypes.call_function", "ctypes.cdata", "ctypes.string_at", "ctypes.wstring_at",
        "ctypes.PyObj_FromPtr", "sqlite3.enable_load_extension", "sqlite3.load_extension",
    ))
    blocked_imports = ("_xx", "_test", "_interp", "interpreters", "concurrent.interpreters",
                       "_posixsubprocess", "_ctypes_test", "cffi", "_cffi")
    # event -> (indexes of paths written, indexes of dir_fd arguments)
    write_events = {
        "os.mkdir": ((0,), (2,)), "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)),
        "os.rename": ((0, 1), (2, 3)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
        "os.utime": ((0,), (3,)), "os.truncate": ((0,), ()), "os.chflags": ((0,), ()),
        "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), ()),
    }
    read_events = frozenset(("os.listdir", "os.scandir", "os.getxattr", "os.listxattr"))

    def deny(what, path=None):
        raise _PermissionError(what + ("" if path is None else " " + repr(path)) + " is not allowed in the sandbox")

    def resolve(path):
        p = fspath(path)
        if _type(p) is _bytes:
            p = fsdecode(p)
        if not isabs(p):
            p = join(getcwd(), p)
        return realpath(p)

    def check(path, prefixes, files, what):
        if path is None or _type(path) is _int:
            return  # the cwd (checked on chdir) or an already open fd
        real = resolve(path)
        if not (real in files or real.startswith(prefixes)):
            deny(what, path)

    def no_dotdot(path):
        # A dir_fd can only come from os.open inside work (see "open") and no symlink can be
        # made, so a relative path without '..' resolved against it stays inside work.
        if path is not None and _type(path) is not _int and ".." in fsdecode(fspath(path)).split("/"):
            deny("'..' in a path used with a directory fd:", path)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if _type(path) is _int:
                return
            if mode is None:  # os.open: the event omits dir_fd, so keep it inside work
                no_dotdot(path)
                check(path, work_prefix, os_open_files, "os.open of")
            elif (flags & write_flags) or _any(c in mode for c in "wax+"):
                check(path, work_prefix, write_files, "writing")
            else:
                check(path, read_prefixes, read_files, "reading")
        elif event in denied:
            deny(event)
        elif event == "import":
            if _type(args[0]) is _str and args[0].startswith(blocked_imports):
                raise _ImportError("import of " + args[0] + " is not allowed in the sandbox")
        elif event in write_events:
            paths, fds = write_events[event]
            for i in paths:
                check(args[i], work_prefix, write_files, event + " on")
                if _any(j < len(args) and args[j] is not None for j in fds):
                    no_dotdot(args[i])
        elif event in read_events:
            check(args[0], read_prefixes, read_files, "listing")
        elif event == "os.chdir":
            check(args[0], work_prefix, frozenset((work,)), "chdir to")
        elif event.startswith("socket."):
            if event == "socket.__new__" and args[1] == 1:  # AF_UNIX, e.g. asyncio's socketpair
                return
            deny(event)  # every other socket, and connect/bind/sendto/getaddrinfo on any
        elif event in ("os.fork", "os.forkpty"):
            # Only the main process forks, at most max_forks times: this bounds the whole tree.
            if getpid() != main_pid:
                deny("forking from a forked process")
            forks[0] += 1
            if forks[0] > max_forks:
                deny("more than %d forks" % max_forks)
        elif event == "os.kill":
            pid = args[0]
            if _abs(pid) in protected:
                deny("signalling the sandbox's launcher")
            if pid != 0 and pid != getpid() and (pid == -1 or getpgid(_abs(pid)) != getpgid(0)):
                deny("signalling a process outside the sandbox")
        elif event == "os.killpg":
            if args[0] in protected or (args[0] == 0 and getpgid(0) in protected):
                deny("signalling the sandbox's launcher")
            if args[0] != 0 and args[0] != getpgid(0):
                deny("signalling a process group outside the sandbox")
        elif event == "ctypes.dlopen":
            if args[0] is not None:
                deny("loading a C library")
        elif event == "sqlite3.connect":
            if args[0] not in (":memory:", "", b":memory:", b""):
                check(args[0], work_prefix, write_files, "opening a database at")

    return hook


def print_exception(exc, source):
    """Print ``exc`` like Python does, minus this bootstrap's and the guard's frames."""
    import linecache  # imported only now: it costs ~10 ms of start-up
    import traceback

    linecache.cache["main.py"] = (len(source), None, source.splitlines(True), "main.py")
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    seen = set()
    stack = [te]
    while stack:
        t = stack.pop()
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        t.stack = traceback.StackSummary.from_list([f for f in t.stack if f.filename != BOOT_FILE])
        stack += [t.__cause__, t.__context__]
    sys.stderr.write("".join(te.format()))
    sys.stderr.flush()


PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option, value):
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _children():
    """Pids whose parent is this process (a scan of /proc: no CONFIG_PROC_CHILDREN needed)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, "rb") as f:
                    stat = f.read()
                if int(stat[stat.rindex(b")") + 2:].split()[1]) == me:
                    found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def kill_descendants():
    """SIGKILL every process below this subreaper until none is left (orphans come back to us)."""
    while True:
        kids = _children()
        for pid in kids:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            if not _children():
                return
        if not kids:
            import time

            time.sleep(0.005)


def become_reaper(status_fd, deadline_s):
    """Fork; the child returns (the reaper's pid) to run the code, in a process group of its own;
    this process reaps the run and never returns. The guard protects it from the code's signals."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        _prctl(PR_SET_PDEATHSIG, 9)  # dies with the reaper
        if os.getppid() != parent:
            os._exit(125)
        os.setpgid(0, 0)  # a group of its own: signalling "its group" never reaches the reaper
        return parent
    import select
    import time

    # One loop, no thread (threading costs ~8 ms of start-up): the child's pidfd is readable
    # once it exits, our end of FlowBot's pipe reports POLLERR once FlowBot is gone.
    poller = select.poll()
    poller.register(status_fd, select.POLLERR | select.POLLHUP)
    try:
        poller.register(os.pidfd_open(child), select.POLLIN)
        step_ms = None
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): poll for the exit instead
        step_ms = 20
    end = time.monotonic() + deadline_s
    status = None
    while status is None:
        left = end - time.monotonic()
        if left <= 0:
            break
        try:
            ready = poller.poll(left * 1000 if step_ms is None else min(left * 1000, step_ms))
        except InterruptedError:
            continue
        if any(fd == status_fd for fd, _ in ready):
            break  # FlowBot went away
        try:
            pid, st = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            pid, st = child, 125 << 8
        if pid:
            status = st
    kill_descendants()
    if status is None:
        os._exit(137)
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


def main():
    cfg = marshal.loads(bytes.fromhex(sys.argv[2]))
    status_fd = cfg["status_fd"]
    reaper = become_reaper(status_fd, cfg["deadline_s"]) if cfg.get("reaper") else None
    main_pid = os.getpid()
    sys.argv = ["main.py"]
    sys.dont_write_bytecode = True
    sys.path[:] = [cfg["work"]] + [p for p in sys.path if p] + cfg["site_dirs"]
    with open(cfg["code_path"], encoding="utf-8") as f:
        source = f.read()
    if not cfg.get("reaper"):  # (the reaper above watches the run)
        start_watchdog(status_fd, cfg["deadline_s"])
    set_limits(cfg["rlimits"])
    if cfg.get("uid") is not None:  # (bwrap run as root) become the run's own uid
        become(cfg["uid"])  # from _sandbox_privileges.py, whose text runs before this file's
    if cfg["guard"]:
        install_guard(cfg, main_pid, () if reaper is None else (reaper,))
    # The code runs in a fresh module registered as sys.modules[run_name] (so pickle and
    # `import __main__` work), never in this bootstrap's globals.
    mod = type(sys)(cfg["run_name"])
    mod.__file__ = "main.py"
    sys.modules[cfg["run_name"]] = mod
    try:
        exec(compile(source, "main.py", "exec"), mod.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        print_exception(exc, source)
        os._exit(1)
    if os.getpid() == main_pid:
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(status_fd, b"done")


if __name__ == "__main__":
    main()

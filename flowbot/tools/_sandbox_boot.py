"""Child-side bootstrap of the sandbox: *not* imported by flowbot.

``flowbot.tools.sandbox`` passes this file's text to ``python -S -s -B -c`` (compiled under the
file name ``<flowbot-sandbox>``) with a config dict as ``sys.argv[2]`` (marshalled, hex-encoded:
marshal is built in, so start-up spends no time importing json). It sets the resource
limits, starts a watchdog thread, installs the audit guard, then runs ``main.py`` from the
working dir as the ``__main__`` (or configured) module. Stdlib only: the child cannot see flowbot.

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


def install_guard(cfg, main_pid):
    import _posixsubprocess

    def no_fork_exec(*args, **kwargs):
        raise PermissionError("starting programs is not allowed in the sandbox")

    _posixsubprocess.fork_exec = no_fork_exec  # it raises no audit event of its own
    sys.addaudithook(make_hook(cfg["work"], cfg["read_roots"], cfg["read_files"], cfg["max_forks"], main_pid))


def make_hook(work, read_roots, read_files, max_forks, main_pid):
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
            if pid != 0 and pid != getpid() and (pid == -1 or getpgid(_abs(pid)) != getpgid(0)):
                deny("signalling a process outside the sandbox")
        elif event == "os.killpg":
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


def main():
    cfg = marshal.loads(bytes.fromhex(sys.argv[2]))
    status_fd, main_pid = cfg["status_fd"], os.getpid()
    sys.argv = ["main.py"]
    sys.dont_write_bytecode = True
    sys.path[:] = [cfg["work"]] + [p for p in sys.path if p] + cfg["site_dirs"]
    with open(cfg["code_path"], encoding="utf-8") as f:
        source = f.read()
    start_watchdog(status_fd, cfg["deadline_s"])
    set_limits(cfg["rlimits"])
    if cfg["guard"]:
        install_guard(cfg, main_pid)
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

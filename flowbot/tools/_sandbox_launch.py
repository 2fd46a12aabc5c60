"""Namespace launcher of the sandbox: runs as root, *not* imported by flowbot.

``flowbot.tools.sandbox`` passes this file's text to ``python -c`` together with a plan (a dict,
marshalled and hex-encoded: marshal is built in, so no import time is spent on json).
It makes new mount/net/pid/uts/ipc namespaces, builds a minimal read-only root, drops to an
unprivileged per-run uid without capabilities and execs the child bootstrap. Process tree::

    outer (host pid ns, root)  -> relays the exit status; dies with its parent (PDEATHSIG)
      init (pid 1 of the new ns, root, in the new root)  -> waits; dies with outer; its exit
                                                            kills every process in the namespace
        sandbox python (uid N, no capabilities, no_new_privs)

A child killed by signal S is reported as exit status 128+S, like a shell.
Uses only the stdlib (ctypes for unshare/mount/pivot_root/prctl): it runs before any guard.
"""

import ctypes
import marshal
import os
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
SYS_PIVOT_ROOT = {"x86_64": 155, "amd64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41,
                  "ppc64le": 203, "ppc64": 203, "s390x": 217}

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _enc(s):
    return None if s is None else os.fsencode(s)


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def mount(src, target, fstype, flags, data=None):
    _check(libc.mount(_enc(src), _enc(target), _enc(fstype), flags, _enc(data)), "mount " + target)


def bind(src, target, readonly):
    mount(src, target, None, MS_BIND)
    if readonly:  # a bind mount only takes flags on a remount
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_root(plan):
    new = plan["new_root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    mount("flowbot-root", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for kind, path, extra in plan["entries"]:
        target = new + path
        if kind == "symlink":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(extra, target)
        elif kind == "dir":
            os.makedirs(target, exist_ok=True)
            bind(path, target, readonly=True)
        elif kind in ("file", "dev"):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "wb").close()
            bind(path, target, readonly=kind == "file")
    for path in ("/dev/shm", "/proc", plan["work"]):
        os.makedirs(new + path, exist_ok=True)
    uid, size = plan["uid"], plan["disk_mb"]
    try:  # conveniences; the sandbox works without them
        mount("flowbot-shm", new + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=1777" % size)
        mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass
    mount("flowbot-work", new + plan["work"], "tmpfs", MS_NOSUID | MS_NODEV,
          "size=%dm,mode=700,uid=%d,gid=%d" % (size, uid, uid))
    with open(plan["code_path"], "rb") as src, open(new + plan["work"] + "/main.py", "wb") as dst:
        dst.write(src.read())
    os.chown(new + plan["work"] + "/main.py", uid, uid)
    enter_root(new)
    os.chdir(plan["work"])


def enter_root(new):
    os.chdir(new)
    nr = SYS_PIVOT_ROOT.get(os.uname().machine.lower())
    if nr is None:  # unknown arch: chroot (escaping it needs capabilities the child lacks)
        os.chroot(".")
        return
    os.mkdir(".oldroot")
    _check(libc.syscall(nr, b".", b".oldroot"), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.oldroot", MNT_DETACH), "umount old root")
    os.rmdir("/.oldroot")


def relay(pid):
    """Wait for ``pid`` and exit like it did (signal S -> status 128+S)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(125)
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


def main():
    plan = marshal.loads(bytes.fromhex(sys.argv[2]))
    # Die with the parent (FlowBot); init below dies with us, and the namespace with init.
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    if os.getppid() != plan["parent_pid"]:
        os._exit(125)  # the parent died before prctl took effect
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC), "unshare")
    init = os.fork()
    if init:
        relay(init)
    # pid 1 of the new pid namespace
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    try:
        build_root(plan)
    except Exception as exc:
        sys.stderr.write("sandbox setup failed: %s\n" % exc)
        os._exit(125)
    child = os.fork()
    if child:
        relay(child)
    try:
        become(plan["uid"])  # from _sandbox_privileges.py, whose text runs before this file's
        argv = plan["argv"]
        os.execve(argv[0], argv, plan["env"])
    except Exception as exc:
        sys.stderr.write("sandbox setup failed: %s\n" % exc)
    os._exit(125)


if __name__ == "__main__":
    main()

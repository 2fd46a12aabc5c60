"""The sandbox's privilege drop, shared by its launcher and its bootstrap: *not* imported by flowbot.

``flowbot.tools.sandbox`` runs ``_sandbox_launch.py`` (the namespaces level) and
``_sandbox_boot.py`` (every level) as source text in a fresh interpreter that cannot import
flowbot, and puts this file's text before each, so the two paths that start as root (the
namespaces level, bubblewrap run as root) leave it in one way. Stdlib only; ctypes is imported
when the drop happens, not at start-up.
"""

import os


def become(uid):
    """Leave root for ``uid`` for good: empty the capability bounding set, drop the groups, switch
    every user and group id, clear the inheritable set, and set no_new_privs (no setuid binary or
    file capability gives anything back). The kernel then counts the run's processes for
    RLIMIT_NPROC, which it never does for root's."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            break  # past the last capability this kernel knows (EINVAL)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from root to non-root: the permitted and effective sets empty
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: twice 32 bits each, all zero
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "no_new_privs")

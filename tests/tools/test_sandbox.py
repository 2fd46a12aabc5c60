"""The sandbox stops what untrusted code must not do, and the parent keeps working afterwards.

Most checks run on both isolation levels; ``audit_guard=False`` on the "namespaces" level shows
the kernel layers hold on their own, without the in-interpreter guard.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from flowbot.tools import sandbox
from flowbot.tools.sandbox import SandboxUnavailable, run_python

from .conftest import processes_in, processes_with


async def assert_still_works(isolation: str) -> None:
    res = await run_python("print(sum(range(10)))", isolation=isolation)
    assert res.ok and res.stdout == "45\n", res.stderr


async def test_runs_code_with_stdin_and_reports_exit(isolation: str) -> None:
    res = await run_python("import sys\nprint(sys.stdin.read().upper())", stdin="hello", isolation=isolation)
    assert (res.stdout, res.exit_code, res.completed, res.isolation) == ("HELLO\n", 0, True, isolation)
    bad = await run_python("print('before')\nraise ValueError('boom')", isolation=isolation)
    assert bad.exit_code == 1 and not bad.completed and bad.stdout == "before\n"
    assert 'File "main.py", line 2' in bad.stderr and "ValueError: boom" in bad.stderr
    assert "<flowbot-sandbox>" not in bad.stderr  # the guard's own frames are hidden
    exited = await run_python("import sys\nsys.exit(3)", isolation=isolation)
    assert exited.exit_code == 3 and not exited.completed


async def test_cannot_read_files_outside_its_dir(isolation: str, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    for path in ("/etc/passwd", str(secret)):
        res = await run_python(f"print(open({path!r}).read())", isolation=isolation)
        assert res.exit_code != 0 and "root:" not in res.stdout and "TOP-SECRET" not in res.stdout
        assert "PermissionError" in res.stderr
    listing = await run_python(f"import os\nprint(os.listdir({str(tmp_path)!r}))", isolation=isolation)
    assert listing.exit_code != 0 and "secret.txt" not in listing.stdout
    await assert_still_works(isolation)


async def test_kernel_hides_files_without_the_guard(ns_only: None, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    code = textwrap.dedent(f"""
        import os
        for p in ("/etc/passwd", {str(secret)!r}, "/root"):
            try:
                print(p, open(p).read() if os.path.isfile(p) else os.listdir(p))
            except OSError as e:
                print(p, type(e).__name__)
        print("uid", os.getuid(), "cwd", os.getcwd())
    """)
    res = await run_python(code, isolation="namespaces", audit_guard=False)
    assert res.ok, res.stderr
    assert "TOP-SECRET" not in res.stdout and "root:x" not in res.stdout
    assert "/etc/passwd FileNotFoundError" in res.stdout and f"{secret} FileNotFoundError" in res.stdout
    uid = int(res.stdout.split("uid ")[1].split()[0])
    assert uid != 0 and "cwd /sandbox" in res.stdout


async def test_code_behind_a_kernel_boundary_holds_no_capability_and_is_not_root_outside(boundary: str) -> None:
    code = textwrap.dedent("""
        import os
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        print(*(f"{k}={status[k].split()[0]}" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")))
        print("pid", os.getpid())
    """)
    res = await run_python(code, isolation=boundary, audit_guard=False)
    assert res.ok, res.stderr
    caps = dict(item.split("=") for item in res.stdout.split("\n")[0].split())
    assert all(int(caps[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
    assert caps["NoNewPrivs"] == "1"
    # the kernel counts the run's processes against a uid of its own (RLIMIT_NPROC exempts root's):
    # seen from the host, a process of the run is never root's
    code = "import time\nprint('up', flush=True)\ntime.sleep(3)"
    task = asyncio.ensure_future(run_python(code, isolation=boundary, audit_guard=False, timeout_s=10))
    owners: set[int] = set()
    for _ in range(100):
        await asyncio.sleep(0.05)
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
                if b"main.py" in cmdline or b"<flowbot-sandbox>" in cmdline:
                    owners.add(os.stat(f"/proc/{pid}").st_uid)
            except OSError:
                continue
        if owners - {os.geteuid()}:
            break
    res = await task
    assert res.ok and owners - {0}, owners


async def test_cannot_write_outside_its_dir(isolation: str, tmp_path) -> None:
    target = tmp_path / "planted.txt"
    code = f"open({str(target)!r}, 'w').write('x')"
    res = await run_python(code, isolation=isolation)
    assert res.exit_code != 0 and not target.exists()
    inside = await run_python("open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())",
                              isolation=isolation)
    assert inside.ok and inside.stdout == "ok\n"


async def test_kernel_blocks_writes_without_the_guard(ns_only: None, tmp_path) -> None:
    code = textwrap.dedent("""
        for p in ("/usr/planted.txt", "/planted.txt"):
            try:
                open(p, "w").write("x")
                print(p, "WRITTEN")
            except OSError as e:
                print(p, type(e).__name__)
    """)
    res = await run_python(code, isolation="namespaces", audit_guard=False)
    assert res.ok and "WRITTEN" not in res.stdout and not os.path.exists("/usr/planted.txt")


@pytest.mark.parametrize("guard", [True, False])
async def test_cannot_connect_to_a_local_listener(isolation: str, guard: bool) -> None:
    if not guard and isolation == "process":
        pytest.skip("without the guard only a kernel boundary blocks the network")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.3)
        port = server.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('CONNECTED')"
        res = await run_python(code, isolation=isolation, audit_guard=guard)
        assert res.exit_code != 0 and "CONNECTED" not in res.stdout
        # the namespaces level has no interface up; bwrap's own loopback has nobody listening
        expected = "PermissionError" if guard else {"namespaces": "Network is unreachable",
                                                     "bwrap": "Connection refused"}[isolation]
        assert expected in res.stderr
        with pytest.raises(socket.timeout):
            server.accept()
    await assert_still_works(isolation)


async def test_cannot_start_programs(isolation: str) -> None:
    code = "import subprocess\nprint(subprocess.run(['echo', 'RAN'], capture_output=True).stdout)"
    res = await run_python(code, isolation=isolation)
    assert res.exit_code != 0 and "RAN" not in res.stdout and "PermissionError" in res.stderr
    direct = await run_python("import os\nos.system('echo RAN')", isolation=isolation)
    assert direct.exit_code != 0 and "RAN" not in direct.stdout


@pytest.mark.parametrize("guard", [True, False])
async def test_fork_bomb_is_stopped(isolation: str, guard: bool) -> None:
    if not guard and isolation == "process":
        pytest.skip("without the guard only a kernel boundary bounds processes (RLIMIT_NPROC per uid)")
    bomb = "import os\nwhile True:\n    os.fork()"
    res = await run_python(bomb, isolation=isolation, audit_guard=guard, max_processes=8,
                           memory_mb=128, timeout_s=30)
    assert not res.ok and not res.timed_out  # stopped by the process limit, not the clock
    if guard:
        assert "PermissionError" in res.stderr
    else:  # RLIMIT_NPROC on the run's own uid (or the supervisor's count)
        assert "BlockingIOError" in res.stderr or res.killed_reason == "process_limit"
    await assert_still_works(isolation)


@pytest.mark.parametrize("guard", [True, False])
async def test_unbounded_allocation_is_stopped(isolation: str, guard: bool) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))"
    # the clock is only a backstop here: on a loaded machine starting the run alone took over 5 s
    res = await run_python(code, isolation=isolation, audit_guard=guard, memory_mb=128, timeout_s=30)
    assert res.killed_reason == "memory_limit" and "MemoryError" in res.stderr and not res.timed_out
    await assert_still_works(isolation)


#: how a timed-out run ends: the supervisor's kill, or, when a loaded machine delays that kill past the
#: CPU limit that backs the clock (one second more than the timeout), the kernel's SIGXCPU
TIMEOUT_EXITS = (-signal.SIGKILL, -signal.SIGXCPU)


async def test_infinite_loop_times_out(isolation: str) -> None:
    res = await run_python("print('started', flush=True)\nwhile True:\n    pass", isolation=isolation, timeout_s=1)
    assert res.timed_out and res.killed_reason == "timeout" and res.exit_code in TIMEOUT_EXITS
    assert res.stdout == "started\n" and not res.completed
    await assert_still_works(isolation)


async def test_output_is_capped(isolation: str) -> None:
    res = await run_python("while True:\n    print('x' * 1000)", isolation=isolation, max_output_bytes=5000)
    assert res.truncated and res.killed_reason == "output_limit" and len(res.stdout) == 5000
    await assert_still_works(isolation)


FLOODS = {  # programs that write far more than the cap, as fast as they can
    "stdout": "while True:\n    print('x' * 1000)",
    "stdout_big_writes": "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)",
    "stderr": "import sys\nwhile True:\n    sys.stderr.write('e' * 4096)",
}


def assert_output_limited(res, stream: str, cap: int) -> None:
    text = res.stderr if stream == "stderr" else res.stdout
    assert res.truncated and res.killed_reason == "output_limit" and not res.timed_out
    assert len(text) == cap and not res.completed and res.note == ""


def assert_timed_out(res) -> None:
    assert res.timed_out and res.killed_reason == "timeout" and res.exit_code in TIMEOUT_EXITS
    assert res.note == ""


@pytest.mark.timeout(90)  # a lost exit or an undrained pipe fails fast instead of hanging
async def test_repeated_and_concurrent_limit_runs_all_return(isolation: str) -> None:
    # Regression: once a run passed the output cap, its pipe was no longer read, asyncio never
    # saw the pipe close, and waiting for the process hung forever.
    cap = 5000
    for _ in range(3):  # back to back
        for name, code in FLOODS.items():
            res = await run_python(code, isolation=isolation, max_output_bytes=cap)
            assert_output_limited(res, "stderr" if name == "stderr" else "stdout", cap)
    assert_timed_out(await run_python("while True:\n    print('t')", isolation=isolation, timeout_s=0.5,
                                      max_output_bytes=10**9))
    floods = [run_python(FLOODS["stdout"], isolation=isolation, max_output_bytes=cap) for _ in range(8)]
    sleepers = [run_python("import time\ntime.sleep(60)", isolation=isolation, timeout_s=1) for _ in range(2)]
    results = await asyncio.gather(*floods, *sleepers)  # concurrently
    for res in results[:8]:
        assert_output_limited(res, "stdout", cap)
    for res in results[8:]:
        assert_timed_out(res)
    await assert_still_works(isolation)


@pytest.mark.timeout(60)
async def test_a_lost_exit_report_still_returns(isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Safety net: asyncio never tells the supervisor the process ended; the run must still come
    # back (bounded waits, status from the kernel or the transport) and say what happened.
    monkeypatch.setattr(sandbox._Collector, "process_exited", lambda self: None)
    monkeypatch.setattr(sandbox, "_EXIT_GRACE_S", 0.5)
    res = await run_python("while True:\n    pass", isolation=isolation, timeout_s=0.5)
    assert res.timed_out and res.exit_code in TIMEOUT_EXITS
    assert "did not report" in res.note


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="needs os.waitid")
def test_exit_status_is_read_without_reaping_the_child() -> None:
    for code, expected in (("import sys; sys.exit(3)", 3), ("import os; os.kill(os.getpid(), 9)", -9)):
        child = subprocess.Popen([sys.executable, "-c", code])
        assert wait_until(lambda: sandbox._peek_exit(child.pid) != "running", 10)
        assert sandbox._peek_exit(child.pid) == expected
        assert child.wait(timeout=5) == expected  # still there for its owner to reap
        assert sandbox._peek_exit(child.pid) == "reaped"


async def test_environment_is_scrubbed(isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-do-not-leak-123")
    res = await run_python("import os\nprint(sorted(os.environ.items()))", isolation=isolation)
    assert res.ok and "OPENAI_API_KEY" not in res.stdout and "sk-test-do-not-leak" not in res.stdout
    assert "PYTHONHASHSEED" in res.stdout  # the child gets a minimal, fixed environment


async def test_guard_blocks_limits_raise_and_ctypes_calls_but_sympy_imports(isolation: str) -> None:
    raise_limit = await run_python("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (999, 999))",
                                   isolation=isolation)
    assert raise_limit.exit_code != 0 and "PermissionError" in raise_limit.stderr
    libc = await run_python("import ctypes\nctypes.CDLL('libc.so.6').getpid()", isolation=isolation)
    assert libc.exit_code != 0 and "PermissionError" in libc.stderr
    sympy = await run_python("import sympy\nprint(sympy.sqrt(8))", isolation=isolation)
    assert sympy.ok and sympy.stdout == "2*sqrt(2)\n", sympy.stderr


async def test_concurrent_runs_are_independent(isolation: str) -> None:
    results = await asyncio.gather(*(run_python(f"print({i} * {i})", isolation=isolation) for i in range(6)))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(6)]


async def test_no_process_survives_the_run(ns_only: None) -> None:
    # A grandchild that leaves the session and becomes a different program: the PID namespace
    # still takes it down when the run ends, on a clean exit and on a timeout alike.
    # (the program outlives the start of its grandchild by seconds, so that a test process starved by a
    # busy machine still sees the grandchild before the run ends: at 1 s it did not, next to an experiment)
    for tail, timeout in (("time.sleep(3)\nprint('done')", 30.0), ("time.sleep(600)", 6.0)):
        token = f"{secrets.randbelow(10**6) + 10**6}.25"
        code = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                f"    os.execv('/bin/sleep', ['sleep', {token!r}])\n{tail}")
        run = asyncio.create_task(run_python(code, isolation="namespaces", audit_guard=False, timeout_s=timeout))
        end = time.monotonic() + 10
        while not processes_with(f"sleep {token}"):
            assert time.monotonic() < end and not run.done(), "the grandchild never started"
            await asyncio.sleep(0.02)
        res = await run
        assert res.ok or res.timed_out, res.stderr
        assert processes_with(f"sleep {token}") == []


async def wait_for_processes(directory: str, count: int, seconds: float = 10) -> None:
    end = time.monotonic() + seconds
    while len(processes_in(directory)) < count:
        assert time.monotonic() < end, f"expected {count} sandboxed processes to appear"
        await asyncio.sleep(0.05)


async def test_timeout_kills_forked_children(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # holds the run dir: the children's cwd
    code = "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(60)\ntime.sleep(60)"
    run = asyncio.create_task(run_python(code, isolation="process", timeout_s=2))
    await wait_for_processes(str(tmp_path), 4)  # the program and its three children
    res = await run
    assert res.timed_out
    assert processes_in(str(tmp_path)) == []


async def test_cancelled_run_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run = asyncio.create_task(run_python("import time\ntime.sleep(60)", isolation="process"))
    await wait_for_processes(str(tmp_path), 1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.sleep(0.2)
    assert processes_in(str(tmp_path)) == [] and os.listdir(tmp_path) == []


PARENT_SCRIPT = """
import asyncio, sys
from flowbot.tools.sandbox import run_python
code, isolation, guard = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
asyncio.run(run_python(code, isolation=isolation, audit_guard=guard, timeout_s=60))
"""


def wait_until(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("level", ["namespaces", "process"])
def test_run_dies_with_its_parent(level: str, has_namespaces: bool, tmp_path) -> None:
    if level == "namespaces" and not has_namespaces:
        pytest.skip("namespace isolation unavailable")
    if level == "namespaces":  # an exec'd program has no watchdog: the namespace must go anyway
        n = secrets.randbelow(10**6) + 10**6
        token = f"sleep {n + 1}.75"  # computed in the child: not on our parent's command line
        code, guard = f"import os\nos.execv('/bin/sleep', ['sleep', str({n} + 1) + '.75'])", "0"
        running = lambda: processes_with(token)  # noqa: E731
    else:  # the child works in <run dir>/work under our TMPDIR (launchers of the probe do not)
        code, guard = "import time\ntime.sleep(60)", "1"
        running = lambda: processes_in(str(tmp_path), leaf="work")  # noqa: E731
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, code, level, guard], env=env)
    try:
        # a bound on waiting, not a speed claim: a loaded machine takes long to start python + flowbot
        assert wait_until(running, 60), "the sandboxed process never started"
    finally:
        parent.kill()
        parent.wait()
    assert wait_until(lambda: not running(), 10), "the sandboxed process outlived its parent"


async def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        await run_python("pass", timeout_s=0)
    with pytest.raises(ValueError, match="isolation"):
        await run_python("pass", isolation="docker")  # type: ignore[arg-type]


async def test_namespaces_unavailable_is_a_clear_error(has_namespaces: bool) -> None:
    if has_namespaces:
        pytest.skip("namespaces are available here")
    with pytest.raises(SandboxUnavailable):
        await run_python("pass", isolation="namespaces")

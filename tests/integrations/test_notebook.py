"""FlowBot in a real Jupyter kernel (ipykernel, driven over ZMQ with jupyter_client): the sync API
works inside the kernel's running event loop, ``await flowbot.aoptimize(...)`` works at top level,
and the progress bar is a live widget whose last frame shows the finished count."""

import json
import textwrap

import pytest

pytest.importorskip("ipykernel", reason="needs ipykernel (in the dev extra)")
pytest.importorskip("ipywidgets", reason="needs ipywidgets (the notebook extra)")
manager = pytest.importorskip("jupyter_client.manager", reason="needs jupyter_client (in the dev extra)")

SETUP = textwrap.dedent('''
    import asyncio, re, flowbot
    from flowbot.testing import ScriptedLM

    def reply(req, i):
        n = re.findall(r"(\\d+)\\*3", req.messages[-1][1])[-1]
        return f"Answer: {int(n) * 3}"

    rows = [{"id": f"r{i}", "q": f"{i}*3", "a": str(i * 3)} for i in range(12)]
    task = flowbot.Task("times3", data=rows, inputs=["q"], targets=["a"], metric="numeric")
    lm = lambda: {"m": ScriptedLM(default=reply, model="m")}
''')


@pytest.fixture(scope="module")
def kernel():
    km, kc = manager.start_new_kernel(kernel_name="python3")
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def execute(kc, code: str, timeout: float = 120) -> list[dict]:
    """Run a cell; its iopub messages (outputs, widgets) until the kernel is idle again."""
    msg_id = kc.execute(code)
    messages = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=timeout)
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert reply["content"]["status"] == "ok", errors
    return messages


def stdout(messages) -> str:
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")


def test_sync_api_and_progress_widget_in_a_running_kernel(kernel):
    execute(kernel, SETUP)
    messages = execute(kernel, textwrap.dedent('''
        ev = flowbot.evaluate("cot", task, split="test", model="m", providers=lm(), cache=False, progress=True)
        print("loop running:", asyncio.get_event_loop().is_running(), "score:", ev.score, "n:", ev.n)
    '''))
    assert "loop running: True score: 1.0 n: 3" in stdout(messages)
    widgets = [m for m in messages if m["msg_type"] == "display_data"
               and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
    assert widgets, "the progress bar is shown as a widget"
    frames = [m["content"]["data"]["text/plain"] for m in messages if m["msg_type"] == "display_data"
              and "times3/test" in m["content"]["data"].get("text/plain", "")]
    assert frames and "3/3" in frames[-1]


def test_optimize_sync_and_awaited_aoptimize_in_a_kernel(kernel, tmp_path):
    execute(kernel, SETUP)
    opts = ("model='m', train_size=4, val_size=3, inner={'steps': 0}, outer={'rounds': 0}")
    messages = execute(kernel, textwrap.dedent(f'''
        r1 = flowbot.optimize(task, providers=lm(), run_dir={json.dumps(str(tmp_path / "a"))}, {opts})
        r2 = await flowbot.aoptimize(task, providers=lm(), run_dir={json.dumps(str(tmp_path / "b"))}, {opts})
        wf = flowbot.load({json.dumps(str(tmp_path / "a" / "best.json"))}).bind(lm=flowbot.api.ModelPool("m", providers=lm()).client())
        print("scores:", r1.test_score, r2.test_score, "call:", wf(q="7*3"))
    '''))
    assert "scores: 1.0 1.0 call: {'a': '21'}" in stdout(messages)

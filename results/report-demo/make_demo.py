"""A real run directory made with scripted models, its report, and Chromium screenshots of it.

    python results/report-demo/make_demo.py            # writes results/report-demo/run/ and *.png

The models are scripted (no LLM is called), so the numbers say nothing about any real model; the
point is the report: the per-example test view (best against seed, with traces), the search tree,
usage by phase over two sessions (the run is stopped by its budget, then resumed with a larger one)
and the plots over paid calls. Screenshots need Debian's chromium (``apt-get install -y chromium``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import flowbot
from flowbot.lm import LMRequest
from flowbot.report.html import write_report
from flowbot.testing import ScriptedLM

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUN = Path("results/report-demo/run")  # relative to the repository root: the report shows it
PRICE = (0.15e-6, 0.60e-6)  # dollars per input / output token
CALCULATOR = '{"op": "add_tool_step", "tool": "calculator", "consumer": "solve", "args": {"expression": "question"}}'
ENSEMBLE = '{"op": "ensemble", "node_id": "solve", "k": 3}'


def rows(n: int, start: int) -> list[dict]:
    out = []
    for i in range(start, start + n):
        a, b = 1000 + 37 * i, 300 + 11 * i
        out.append({"id": f"q{i}", "question": f"{a}*{b}", "answer": str(a * b)})
    return out


def task_model() -> ScriptedLM:
    """Exact on its own when the first factor is even (told to multiply exactly: also when it ends
    in 1), else approximate; with a calculator result it copies it, but drops the last digit when
    the second factor is divisible by 3 — so the calculator wins most examples and loses a few."""
    def reply(req: LMRequest, i: int) -> str:
        user = req.messages[-1][1]
        a, b = map(int, re.findall(r"(\d+)\*(\d+)", user)[-1])
        results = re.findall(r"Calculator result:\n(\S+)", user)
        if results:
            value = results[-1]
            return f"The calculator says {value}.\nAnswer: {value[:-1] if b % 3 == 0 else value}"
        exactly = "exactly" in "\n".join(c for _, c in req.messages)
        if a % 2 == 0 or (exactly and a % 10 == 1):
            return f"{a} times {b} is {a * b}.\nAnswer: {a * b}"
        return f"About {round(a * b, -4)}.\nAnswer: {round(a * b, -4)}"
    return ScriptedLM(default=reply, model="demo-task-model", price_per_token=PRICE)


def optimizer_model() -> ScriptedLM:
    proposals = iter([("The products are wrong in the last digits; give it a calculator.", CALCULATOR),
                      ("Sample three answers and vote.", ENSEMBLE)])

    def propose(req: LMRequest, i: int) -> str:
        why, edit = next(proposals, ("Try the calculator again.", CALCULATOR))
        return f"{why}\n```json\n{edit}\n```"

    return ScriptedLM([
        (r"propose ONE structural edit|Edit vocabulary", propose),
        (r"What is wrong with the output\?", "The product is only approximate."),
        (r"Reply with exactly these lines", "GRADIENT: compute the product exactly, digit by digit."),
        (r"merge feedback", "- compute exactly"),
        (r"<instruction>", "<instruction>Multiply the two numbers exactly, digit by digit.</instruction>"),
    ], model="demo-optimizer-model", price_per_token=PRICE)


def make_run() -> None:
    if RUN.exists():
        shutil.rmtree(RUN)
    task = flowbot.Task("multiply", train=rows(10, 0), val=rows(8, 100), test=rows(12, 200), inputs=["question"],
                        targets=["answer"], metric="numeric", description="multiply two integers")
    options = dict(model="demo-task-model", optimizer_model="demo-optimizer-model", run_dir=RUN, train_size=10,
                   val_size=8, inner={"steps": 1, "demos": 0, "minibatch_size": 5}, outer={"rounds": 2, "patience": 2})
    providers = {"demo-task-model": task_model(), "demo-optimizer-model": optimizer_model()}
    first = flowbot.optimize(task, providers=providers, budget={"calls": 45}, **options)  # stopped by its budget
    print(f"session 1: stopped={first.stopped!r}")
    providers = {"demo-task-model": task_model(), "demo-optimizer-model": optimizer_model()}
    second = flowbot.optimize(task, providers=providers, budget={"calls": 400}, **options)  # resumed
    print(f"session 2: resumed={second.resumed} best={second.best_id} val={second.val_score} test={second.test_score}")
    (RUN / "cache.sqlite").unlink()  # the demo does not need its cache in the repository
    for extra in RUN.glob("cache.sqlite-*"):
        extra.unlink()


def crop_bottom(png: Path) -> None:
    """Cut the empty background below the page (the window is made taller than any report)."""
    from PIL import Image  # matplotlib's dependency

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        background = rgb.getpixel((rgb.width - 1, rgb.height - 1))
        bottom = rgb.height
        while bottom > 1 and all(rgb.getpixel((x, bottom - 1)) == background for x in range(0, rgb.width, 4)):
            bottom -= 1
        rgb.crop((0, 0, rgb.width, min(rgb.height, bottom + 40))).save(png, optimize=True)


def screenshot(page: Path, out: Path, fragment: str = "", height: int = 1800) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("screenshots need chromium: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        "--hide-scrollbars", f"--window-size=1280,{height}", f"--screenshot={out}",
                        page.as_uri() + fragment], check=True, capture_output=True, timeout=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    os.chdir(ROOT)
    make_run()
    report = write_report(RUN).resolve()
    screenshot(report, HERE / "report.png", height=2000)  # the run, its usage, results and the per-example view
    screenshot(report, HERE / "report-full.png", height=12000)  # the whole page
    crop_bottom(HERE / "report-full.png")

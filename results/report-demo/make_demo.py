"""A real run directory made with scripted models, its report, and Chromium screenshots of it.

    python results/report-demo/make_demo.py            # writes results/report-demo/run/ and *.png

The models are scripted (no LLM is called), so the numbers say nothing about any real model; the
point is the report of a run of today's search: structural proposals decoded under the parent's
schema (a critique, then an edit from the menu), paired racing against the incumbent (one
structure accepted, others raced out), inner-loop instruction rewrites of the seed and of the
accepted structure, the per-example test view (best against seed, with traces), the search tree,
usage by phase over two sessions (the run is stopped with a STOP file, then resumed) and the
plots over paid calls. Screenshots need Debian's chromium (``apt-get install -y
chromium``). ``make_run(path)`` alone builds the run directory (a test runs it into a temp dir).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import flowbot
from flowbot.lm import LMRequest
from flowbot.testing import ScriptedLM

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUN = Path("results/report-demo/run")  # relative to the repository root: the report shows it
PRICE = (0.15e-6, 0.60e-6)  # dollars per input / output token
BUDGET = 400  # calls, over both sessions

#: what the scripted optimizer proposes, in order of preference, with its critique of the parent;
#: it answers the proposal schema with the first of these the schema offers (as a model decoding
#: under the schema can only pick an offered edit)
PREFERENCES = [
    ("program_of_thought", "solve", {}, "The chain of thought rounds long products; the digits are wrong in about "
                                        "half the answers. Compute the product in a Python program instead."),
    ("verify_and_revise", "write_program", {}, "The program sometimes copies a factor wrong; a verifier that checks "
                                               "the code against the question before it runs should catch that."),
    ("self_consistency", "solve", {"k": 3}, "When the program fails, the fallback's answer is rounded; sample it "
                                            "three times and vote."),
]


def rows(n: int, start: int) -> list[dict]:
    out = []
    for i in range(start, start + n):
        a, b = 1000 + 37 * i, 300 + 11 * i
        out.append({"id": f"q{i}", "question": f"{a}*{b}", "answer": str(a * b)})
    return out


def demo_task() -> flowbot.Task:
    return flowbot.Task("multiply", train=rows(10, 0), val=rows(16, 100), test=rows(16, 200), inputs=["question"],
                        targets=["answer"], metric="numeric", description="multiply two integers", tools=["python"])


def _numbers(text: str) -> tuple[int, int]:
    a, b = re.findall(r"(\d+)\*(\d+)", text)[-1]
    return int(a), int(b)


def task_model() -> ScriptedLM:
    """In its head: exact when the first factor is a multiple of 4 (told to multiply exactly: when it
    is even), else rounded. Writing a program: right, except that it copies the second factor with
    one digit off when that factor is a multiple of 7 (told to copy digit by digit: only when it is
    also above 2000, so the fix found on validation does not fully carry to the test split). As a
    verifier it passes the code on unchanged: it does not catch the slip."""
    def reply(req: LMRequest, i: int) -> str:
        system, user = req.messages[0][1], req.messages[-1][1]
        if "Check its code line by line" in system:  # a verifier of the program: repeats it
            code = re.findall(r"```python\n.*?```", user, re.S)
            return code[-1] if code else user
        a, b = _numbers(user)
        if "writing a Python program" in system:
            careful = "digit by digit" in system
            slip = b % 7 == 0 and (not careful or b > 2000)
            copied = b + 10 if slip else b
            return f"```python\na = {a}\nb = {copied}\nprint(a * b)\n```"
        exactly = "exactly" in system
        if a % 4 == 0 or (exactly and a % 2 == 0):
            return f"{a} times {b}: {a} * {b // 100 * 100} = {a * (b // 100 * 100)}, plus {a} * {b % 100} = " \
                   f"{a * (b % 100)}; together {a * b}.\nAnswer: {a * b}"
        return f"{a} is about {round(a, -2)} and {b} about {round(b, -1)}, so about {round(a, -2) * round(b, -1)}." \
               f"\nAnswer: {round(a, -2) * round(b, -1)}"
    return ScriptedLM(default=reply, model="demo-task-model", price_per_token=PRICE)


def _offered(schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(critique, edit): the first preferred edit the proposal schema offers, else its first choice."""
    edit = schema["properties"]["edit"]
    alternatives = [alt["properties"] for alt in edit.get("anyOf", [edit])]
    for op, target, options, critique in PREFERENCES:
        for props in alternatives:
            if (props["op"]["const"], props["target"]["const"]) == (op, target) and \
                    all(v in props[k]["enum"] for k, v in options.items()):
                return critique, {"op": op, "target": target, **options}
    props = alternatives[0]
    return ("None of the usual fixes is left; try another structure.",
            {k: (v["const"] if "const" in v else v["enum"][0]) for k, v in props.items()})


def optimizer_model() -> ScriptedLM:
    """Answers the optimizer's prompts: proposals (requests with a schema) as JSON, losses, backward
    gradients, merged feedback and instruction rewrites as the templates ask."""
    def reply(req: LMRequest, i: int) -> str:
        user = req.messages[-1][1]
        if req.schema is not None:  # a structural proposal, decoded under the parent's schema
            critique, edit = _offered(json.loads(req.schema))
            return json.dumps({"critique": critique, "edit": edit})
        if "What is wrong with the output?" in user:
            return "The product is wrong in its last digits: it was rounded or a factor was copied wrong."
        if "Reply with exactly these lines" in user:  # backward: a tool passes the blame to its input
            upstream = re.findall(r"FEEDBACK\[(\w+)\]", user)
            if re.search(r"Step '\w+' \(tool\)", user):
                blame = "the program multiplies a factor that is not the one in the question."
                return "GRADIENT: NONE\n" + "\n".join(f"FEEDBACK[{f}]: {blame}" for f in upstream)
            return "\n".join(["GRADIENT: compute the product exactly, and copy each factor digit by digit."]
                             + [f"FEEDBACK[{f}]: NONE" for f in upstream])
        if "<instruction>" in user:
            if "write_program" in user:
                return ("<instruction>Solve the problem by writing a Python program.\n- Copy each number of the "
                        "question into a variable digit by digit, then check it against the question.\n- End with "
                        "one print() of the final answer only: just the number.</instruction>")
            return "<instruction>Multiply the two numbers exactly, digit by digit; never round.</instruction>"
        return "- compute exactly\n- copy the factors digit by digit"
    return ScriptedLM(default=reply, model="demo-optimizer-model", price_per_token=PRICE)


def make_run(run: str | Path = RUN, *, keep_cache: bool = False) -> tuple[Any, Any]:
    """The demo run in ``run`` (made afresh) over two sessions: the first is stopped with a STOP
    file (as a user would stop it) once the first structure has won its race; the second resumes
    it, replaying what the first paid for from the cache and the log. Returns both results."""
    run = Path(run)
    if run.exists():
        shutil.rmtree(run)
    options: dict[str, Any] = dict(
        model="demo-task-model", optimizer_model="demo-optimizer-model", run_dir=run, budget={"calls": BUDGET},
        train_size=10, val_size=16, concurrency=4, inner={"steps": 2, "demos": 0, "minibatch_size": 5},
        outer={"rounds": 3, "patience": 3})

    def providers() -> dict[str, ScriptedLM]:
        return {"demo-task-model": task_model(), "demo-optimizer-model": optimizer_model()}

    def stop_after_first_structure(event: dict[str, Any]) -> None:
        if event["type"] == "candidate_accepted" and event["id"] != "c0":
            (run / "STOP").write_text("")

    first = flowbot.optimize(demo_task(), providers=providers(), callbacks=[stop_after_first_structure], **options)
    print(f"session 1: stopped={first.stopped!r}")
    second = flowbot.optimize(demo_task(), providers=providers(), **options)
    print(f"session 2: resumed={second.resumed} best={second.best_id} val={second.val_score} "
          f"test={second.test_score} stopped={second.stopped!r}")
    (run / "lock").unlink(missing_ok=True)  # names this machine's process: not part of the demo
    if not keep_cache:  # the demo does not need its cache in the repository
        for cache in [run / "cache.sqlite", *run.glob("cache.sqlite-*")]:
            cache.unlink(missing_ok=True)
    return first, second


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


def screenshot(page: Path, out: Path, height: int = 1800) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("screenshots need chromium: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars",
                        f"--window-size=1280,{height}", f"--screenshot={out}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
    print(f"wrote {out}")


def from_examples(report: Path) -> Path:
    """The report as written plus one style rule: under the page's title, only what follows the
    Test examples heading is shown (the page scrolled to its per-example view), for report.png."""
    html = report.read_text(encoding="utf-8")
    page = report.with_name(".report-examples.html")
    style = "<style>main > :not(h1):not(h1 + div):not(nav):not(#examples):not(#examples ~ *) {display: none}</style>"
    page.write_text(html.replace("</head>", style + "</head>", 1), encoding="utf-8")
    return page


if __name__ == "__main__":
    from flowbot.report.html import write_report

    os.chdir(ROOT)
    make_run()
    report = write_report(RUN).resolve()
    print(f"wrote {report}")
    examples = from_examples(report)
    try:
        screenshot(examples, HERE / "report.png", height=2000)  # the per-example view, at the top
    finally:
        examples.unlink()
    screenshot(report, HERE / "report-full.png", height=16000)  # the whole page
    crop_bottom(HERE / "report-full.png")

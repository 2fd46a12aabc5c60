"""The paper's benchmarks as :class:`Task` instances (the same public API users get).

    >>> sorted(BENCHMARKS)[:3]
    ['drop', 'fever', 'gsm8k']

Data comes from a data directory laid out like ``<root>/<benchmark>/...`` (``--data-dir`` or
``FLOWBOT_DATA_DIR``), from the GSM8K sample bundled with FlowBot, or, on a machine that is online
and has ``datasets`` installed, from Hugging Face. The splits are fixed (see ``SPLITS.md`` beside
this file): AFlow's validation and test fixtures where they exist, so numbers compare with AFlow's
table; seeded disjoint splits elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from flowbot.tasks.loaders import DataError, Row, read_file, read_hf
from flowbot.tasks.metrics import FEVER_LABELS, gsm8k_gold, math_gold
from flowbot.tasks.task import Task

BUNDLED = Path(__file__).parent / "data"

Sources = dict[str, list[Row]]


@dataclass
class Benchmark:
    name: str
    description: str
    inputs: list[str]
    targets: list[str]
    metric: str
    transform: Callable[[dict[str, Any]], dict[str, Any] | None]
    local: Callable[[Path], Sources]
    hf: Callable[[], Sources] | None = None
    labels: list[str] | None = None
    protocol: str = ""
    output: str | None = None  # the workflow's output field when it differs from the target
    #: the tools that make sense for the task (only these are offered to the optimizer)
    tools: tuple[str, ...] = ()
    #: inputs holding the passages retrieval searches and extract-then-answer quotes from
    context_fields: tuple[str, ...] = ()


# -- helpers -------------------------------------------------------------------------------------
def _rows(root: Path, rel: str) -> list[Row]:
    path = root / rel
    if not path.exists():
        raise DataError(f"{path}: no such file (expected the benchmark layout <data-dir>/{rel})")
    return read_file(path)


def _seeded(rows: list[Row], seed: int) -> list[Row]:
    out = list(rows)
    random.Random(seed).shuffle(out)
    return out


def _carve(rows: list[Row], sizes: dict[str, int], seed: int) -> Sources:
    """Disjoint seeded splits: ``sizes`` for val/test, the rest (or a given size) for train."""
    shuffled = _seeded(rows, seed)
    n_val, n_test = sizes["val"], sizes["test"]
    val, test = shuffled[:n_val], shuffled[n_val:n_val + n_test]
    train = shuffled[n_val + n_test:]
    if "train" in sizes:
        train = train[: sizes["train"]]
    return {"train": train, "val": val, "test": test}


def _without(rows: list[Row], exclude: set[str], key: Callable[[dict[str, Any]], str]) -> list[Row]:
    return [r for r in rows if key(r.data) not in exclude]


# -- GSM8K ---------------------------------------------------------------------------------------
def _gsm8k(row: dict[str, Any]) -> dict[str, Any]:
    ex = {"question": row["question"], "answer": gsm8k_gold(row["answer"])}
    if "id" in row:
        ex["id"] = row["id"]
    return ex


def _gsm8k_local(root: Path) -> Sources:
    base = root / "gsm8k"
    train = base / "official" / "train.jsonl"
    if not train.exists():
        train = base / "official" / "train_first500.jsonl"
    return {"train": read_file(train), "val": _rows(root, "gsm8k/aflow/gsm8k_validate.jsonl"),
            "test": _rows(root, "gsm8k/aflow/gsm8k_test.jsonl")}


def _gsm8k_hf() -> Sources:
    test = read_hf("hf:openai/gsm8k:main@test")
    for i, r in enumerate(test):
        r.data["id"] = f"gsm8k-test-{i}"
    aflow_val = set(random.Random(0).sample(range(len(test)), 264))
    return {"train": read_hf("hf:openai/gsm8k:main@train"),
            "val": [r for i, r in enumerate(test) if i in aflow_val],
            "test": [r for i, r in enumerate(test) if i not in aflow_val]}


# -- MATH ----------------------------------------------------------------------------------------
def _math(row: dict[str, Any]) -> dict[str, Any]:
    ex = {"problem": row["problem"], "answer": row.get("answer") or math_gold(row["solution"]),
          "level": row.get("level"), "type": row.get("type") or row.get("subject")}
    if not ex["answer"]:
        raise ValueError("the solution has no \\boxed{} answer")
    ex["id"] = "math-" + hashlib.sha1(row["problem"].encode("utf-8")).hexdigest()[:10]
    return ex


def _math_local(root: Path) -> Sources:
    val = _rows(root, "math/aflow/math_validate.jsonl")
    test = _rows(root, "math/aflow/math_test.jsonl")
    fixture = {r.data["problem"] for r in val + test}
    # AFlow's subset is *every* level-5 problem of its four subjects, so training problems are the
    # same subjects one level down (level 4) from the rest of the MATH test split
    full = _without(_rows(root, "math/full_test/test.jsonl"), fixture, lambda d: d["problem"])
    subjects = {r.data["type"] for r in val}
    train = [r for r in full if r.data.get("type") in subjects and r.data.get("level") == "Level 4"]
    return {"train": train, "val": val, "test": test}


def _math_hf() -> Sources:
    rows = read_hf("hf:EleutherAI/hendrycks_math:all@test")
    keep = [r for r in rows if r.data.get("level") == "Level 5" and r.data.get("type") in
            ("Prealgebra", "Number Theory", "Precalculus", "Counting & Probability")]
    return _carve(keep, {"val": 119, "test": 486}, seed=0)


# -- HotpotQA (distractor) -----------------------------------------------------------------------
def _hotpot(row: dict[str, Any]) -> dict[str, Any]:
    ctx = row["context"]
    if isinstance(ctx, dict):  # Hugging Face form: {"title": [...], "sentences": [[...]]}
        ctx = [[t, s] for t, s in zip(ctx["title"], ctx["sentences"])]
    return {"id": row.get("_id") or row.get("id"), "question": row["question"], "context": ctx,
            "answer": row["answer"], "type": row.get("type")}


def _hotpot_local(root: Path) -> Sources:
    val = _rows(root, "hotpotqa/aflow/hotpotqa_validate.jsonl")
    val_ids = {r.data["_id"] for r in val}
    train = _without(_rows(root, "hotpotqa/dev_distractor_sample/rpt_train_300.jsonl"), val_ids, lambda d: d["_id"])
    train_ids = {r.data["_id"] for r in train}
    test = _without(_rows(root, "hotpotqa/dev_distractor_sample/rpt_dev_300.jsonl"), val_ids | train_ids,
                    lambda d: d["_id"])
    return {"train": train, "val": val, "test": test}


def _hotpot_hf() -> Sources:
    return _carve(read_hf("hf:hotpotqa/hotpot_qa:distractor@validation"),
                  {"val": 200, "test": 800, "train": 300}, seed=0)


# -- DROP ----------------------------------------------------------------------------------------
_DROP_RE = re.compile(r"Passage:\s*(.*)\nQuestion:\s*(.*?)\s*\nAnswer:\s*$", re.S)


def _drop(row: dict[str, Any]) -> dict[str, Any]:
    if "passage" in row and "answers_spans" in row:  # Hugging Face ucinlp/drop
        answers = row["answers_spans"]["spans"]
        return {"id": row.get("query_id"), "passage": row["passage"], "question": row["question"],
                "answers": list(dict.fromkeys(answers))}
    m = _DROP_RE.search(row["context"])
    if m is None:
        raise ValueError("context is not 'Passage: ... Question: ... Answer:'")
    ex = {"passage": m.group(1).strip(), "question": m.group(2).strip(), "answers": row["ref_text"].split("|")}
    if "id" in row:
        ex["id"] = f"drop-{row['id']}"
    return ex


def _drop_local(root: Path) -> Sources:
    val = _rows(root, "drop/aflow/drop_validate.jsonl")
    test = _rows(root, "drop/aflow/drop_test.jsonl")
    used = {int(r.data["id"]) for r in val + test}
    dev = _rows(root, "drop/simple_evals_dev/drop_v0_dev.jsonl.gz")
    # AFlow ids are line numbers of the dev file; training examples are the other lines
    train = [r for r in dev if r.index not in used]
    for r in train:
        r.data["id"] = str(r.index)
    return {"train": train, "val": val, "test": test}


def _drop_hf() -> Sources:
    return _carve(read_hf("hf:ucinlp/drop@validation"), {"val": 200, "test": 800}, seed=0)


# -- FEVER (closed book) -------------------------------------------------------------------------
def _fever(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(row["id"]), "claim": row["claim"], "label": row["label"]}


def _fever_local(root: Path) -> Sources:
    # ReAct evaluates 500 random claims of paper_dev; we fix test 500, val 200, train 1,000 by seed
    return _carve(_rows(root, "fever/paper_dev.jsonl"), {"val": 200, "test": 500, "train": 1000}, seed=0)


def _fever_hf() -> Sources:
    return _carve(read_hf("hf:fever/fever:v1.0@paper_dev"), {"val": 200, "test": 500, "train": 1000}, seed=0)


# -- TriviaQA (closed book) ----------------------------------------------------------------------
_TQA_RE = re.compile(r"^Question:\s*(.*?)\s*\nAnswer:\s*$", re.S)


def _triviaqa(row: dict[str, Any]) -> dict[str, Any]:
    if "question" in row:  # Hugging Face trivia_qa rc.nocontext
        return {"id": row.get("question_id"), "question": row["question"],
                "answers": row["answer"]["aliases"] or [row["answer"]["value"]]}
    m = _TQA_RE.match(row["context"])
    question = m.group(1) if m else row["context"]
    aliases = list(row.get("aliases") or []) or [row["answer"]]
    return {"question": question, "answers": aliases}


def _triviaqa_local(root: Path) -> Sources:
    return _carve(_rows(root, "triviaqa/triviaqa_sm_sub.jsonl"), {"val": 200, "test": 800}, seed=0)


def _triviaqa_hf() -> Sources:
    return _carve(read_hf("hf:mandarjoshi/trivia_qa:rc.nocontext@validation"),
                  {"val": 200, "test": 800, "train": 2000}, seed=0)


# -- HumanEval and MBPP (second tier) ------------------------------------------------------------
def _humaneval(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["task_id"], "prompt": row["prompt"], "entry_point": row["entry_point"], "test": row["test"]}


def _humaneval_local(root: Path) -> Sources:
    val = _rows(root, "humaneval/aflow/humaneval_validate.jsonl")
    # HumanEval has no data outside AFlow's fixtures: the optimizer trains on the validation set
    return {"train": val, "val": val, "test": _rows(root, "humaneval/aflow/humaneval_test.jsonl")}


def _humaneval_hf() -> Sources:
    rows = read_hf("hf:openai/openai_humaneval@test")
    s = _carve(rows, {"val": 33, "test": 131}, seed=0)
    s["train"] = s["val"]
    return s


def _mbpp(row: dict[str, Any]) -> dict[str, Any]:
    tests = row.get("test")
    entry = row.get("entry_point")
    if tests is None:  # official format: a prompt and three asserts
        tests = "\n".join(row["test_list"])
        entry = entry or re.search(r"assert\s+(?:not\s+)?\(?\s*(\w+)\s*\(", row["test_list"][0]).group(1)
    prompt = row.get("prompt") or f"{row['text']}\nYour code should pass this test:\n{row['test_list'][0]}"
    return {"id": str(row["task_id"]), "prompt": prompt, "entry_point": entry, "test": tests,
            "test_imports": list(row.get("test_imports") or [])}


def _mbpp_local(root: Path) -> Sources:
    val = _rows(root, "mbpp/aflow/mbpp_validate.jsonl")
    test = _rows(root, "mbpp/aflow/mbpp_test.jsonl")
    used = {str(r.data["task_id"]) for r in val + test}
    # training: official MBPP problems outside the sanitized set (so never AFlow's val/test)
    train = [r for r in _rows(root, "mbpp/official/mbpp.jsonl") if str(r.data["task_id"]) not in used]
    return {"train": train, "val": val, "test": test}


def _mbpp_hf() -> Sources:
    s = _carve(read_hf("hf:google-research-datasets/mbpp:sanitized@test"), {"val": 86, "test": 341}, seed=0)
    s["train"] = read_hf("hf:google-research-datasets/mbpp:full@train")
    return s


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("gsm8k", "Grade-school math word problems; the answer is a single number.", ["question"],
                  ["answer"], "gsm8k", _gsm8k, _gsm8k_local, _gsm8k_hf, tools=("python", "calculator"),
                  protocol="train: official train (7,473; bundled sample 500); val/test: AFlow fixtures 264/1,055"),
        Benchmark("math", "Competition mathematics (MATH, level 5); give the final answer in LaTeX.",
                  ["problem"], ["answer"], "math", _math, _math_local, _math_hf, tools=("python", "calculator"),
                  protocol="train: MATH test, AFlow's 4 subjects at level 4 (AFlow's subset is all their level 5); "
                           "val/test: AFlow 119/486"),
        Benchmark("hotpotqa", "Multi-hop question answering over the given Wikipedia paragraphs "
                  "(distractor setting); answer with a short span.", ["question", "context"], ["answer"],
                  "hotpot_f1", _hotpot, _hotpot_local, _hotpot_hf, tools=("retrieve",), context_fields=("context",),
                  protocol="val: AFlow fixture 200; train/test: two dev-distractor samples minus AFlow ids "
                           "(294/295); AFlow's test fixture was not available"),
        Benchmark("drop", "Reading comprehension with discrete reasoning (counting, arithmetic, sorting) over "
                  "a passage; answer with a number, date or short span(s).", ["passage", "question"],
                  ["answers"], "drop_f1", _drop, _drop_local, _drop_hf, output="answer",
                  tools=("python", "retrieve"), context_fields=("passage",),
                  protocol="train: DROP dev minus AFlow's subset (8,536); val/test: AFlow 200/800"),
        Benchmark("fever", "Fact verification without evidence text (closed book): is the claim supported, "
                  "refuted, or is there not enough information?", ["claim"], ["label"], "fever", _fever,
                  _fever_local, _fever_hf, labels=list(FEVER_LABELS),
                  protocol="paper_dev, seeded: train 1,000 / val 200 / test 500 (ReAct's test size)"),
        Benchmark("triviaqa", "Closed-book trivia questions; answer with a short name or phrase.", ["question"],
                  ["answers"], "triviaqa_em", _triviaqa, _triviaqa_local, _triviaqa_hf, output="answer",
                  protocol="3,000-question validation sample, seeded: train 2,000 / val 200 / test 800"),
        Benchmark("humaneval", "Write the Python function described by the docstring.", ["prompt"], ["test"],
                  "pass_at_1", _humaneval, _humaneval_local, _humaneval_hf, output="code", tools=("python",),
                  protocol="val/test: AFlow 33/131; no other data, so train = val"),
        Benchmark("mbpp", "Write the Python function the problem asks for.", ["prompt"], ["test"],
                  "pass_at_1", _mbpp, _mbpp_local, _mbpp_hf, output="code", tools=("python",),
                  protocol="val/test: AFlow 86/341 (sanitized MBPP); train: the other 547 official problems"),
    ]
}


def find_data_root(name: str, data_dir: str | Path | None) -> Path | None:
    """The data directory holding ``<name>/``: the argument, $FLOWBOT_DATA_DIR, or the bundled data."""
    for candidate in (data_dir, os.environ.get("FLOWBOT_DATA_DIR")):
        if candidate:
            root = Path(candidate).expanduser()
            if (root / name).is_dir():
                return root
            if data_dir is not None and candidate == data_dir:
                raise DataError(f"{root}: no '{name}' folder (expected {root / name}/...)")
    if (BUNDLED / name).is_dir():
        return BUNDLED
    return None


def load_benchmark(name: str, data_dir: str | Path | None = None, *, output: str | None = None) -> Task:
    """A benchmark as a :class:`Task` with its official metric and fixed splits."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[key]
    root = find_data_root(bench.name, data_dir)
    if root is not None:
        sources = bench.local(root)
    elif bench.hf is not None:
        try:
            sources = bench.hf()
        except DataError as exc:
            raise DataError(f"no local data for {bench.name} (pass --data-dir or set FLOWBOT_DATA_DIR) and "
                            f"Hugging Face failed: {exc}") from None
    else:  # pragma: no cover - every benchmark has an HF source
        raise DataError(f"no data for {bench.name}: pass --data-dir")
    return Task(bench.name, inputs=bench.inputs, targets=bench.targets, metric=bench.metric,
                train=sources["train"], val=sources["val"], test=sources["test"], output=output or bench.output,
                labels=bench.labels, description=bench.description, transform=bench.transform,
                tools=bench.tools, context_fields=bench.context_fields)

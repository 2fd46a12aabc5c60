"""Benchmark loaders on the shared data, the shipped baseline files, and a scripted end-to-end eval."""

import json
import os
from pathlib import Path

import pytest

from flowbot.api import aevaluate
from flowbot.graph.io import load_workflow
from flowbot.lm import LMRequest
from flowbot.tasks import BENCHMARKS, DataError, load_benchmark
from flowbot.tasks.seeds import KINDS, WORKFLOWS_DIR, generate_benchmark_files
from flowbot.testing import ScriptedLM

SHARED = Path(os.environ.get("FLOWBOT_SHARED_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="shared benchmark data not found")

EXPECTED = {  # documented split sizes (SPLITS in the README and `flowbot tasks`)
    "gsm8k": (7473, 264, 1055),
    "math": (558, 119, 486),
    "hotpotqa": (294, 200, 295),
    "drop": (8536, 200, 800),
    "fever": (1000, 200, 500),
    "triviaqa": (2000, 200, 800),
    "humaneval": (33, 33, 131),
    "mbpp": (547, 86, 341),
}


@needs_shared
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_fields_and_disjoint_deterministic_splits(name):
    task = load_benchmark(name, SHARED)
    assert tuple(task.sizes().values()) == EXPECTED[name]
    bench = BENCHMARKS[name]
    for split in ("train", "val", "test"):
        for ex in task.examples(split, 5):
            for f in bench.inputs + bench.targets:
                assert ex.get(f) not in (None, ""), (name, split, f)
    again = load_benchmark(name, SHARED)
    for split in ("train", "val", "test"):
        assert [e["id"] for e in task.examples(split)] == [e["id"] for e in again.examples(split)]
    val_ids = {e["id"] for e in task.examples("val")}
    test_ids = {e["id"] for e in task.examples("test")}
    assert not (val_ids & test_ids)
    if name != "humaneval":  # HumanEval has no data outside the fixtures: train = val, documented
        assert not ({e["id"] for e in task.examples("train")} & (val_ids | test_ids))


@needs_shared
def test_fixture_contents_match_their_sources():
    gsm = load_benchmark("gsm8k", SHARED)
    first = gsm.examples("val", 1)[0]
    assert first["id"] == "gsm8k-test-677" and first["answer"] == "36"
    drop = load_benchmark("drop", SHARED)
    ex = drop.examples("val", 1)[0]
    assert ex["question"] == "How many years did the Yamethin rebellion last?" and ex["answers"] == ["20"]
    assert ex["passage"].startswith("After the end of Forty Years' War")
    hotpot = load_benchmark("hotpotqa", SHARED)
    h = hotpot.examples("val", 1)[0]
    assert len(h["context"]) == 10 and isinstance(h["context"][0][1], list)
    tqa = load_benchmark("triviaqa", SHARED)
    assert all(not e["question"].startswith("Question:") for e in tqa.examples("test", 20))
    fever = load_benchmark("fever", SHARED)
    assert {e["label"] for e in fever.examples("test")} == {"SUPPORTS", "REFUTES", "NOT ENOUGH INFO"}


def test_bundled_gsm8k_works_without_a_data_dir(monkeypatch):
    monkeypatch.delenv("FLOWBOT_DATA_DIR", raising=False)
    task = load_benchmark("gsm8k")
    assert task.sizes() == {"train": 500, "val": 264, "test": 1055}


def test_malformed_benchmark_file_is_reported(tmp_path):
    root = tmp_path / "data"
    (root / "fever").mkdir(parents=True)
    (root / "fever" / "paper_dev.jsonl").write_text('{"id": 1, "claim": "x", "label": "SUPPORTS"}\n{"id": 2, "claim": "y"}\n')
    with pytest.raises(DataError, match=r"paper_dev.jsonl, line 2: cannot read this row \(KeyError: 'label'\)"):
        load_benchmark("fever", root)
    with pytest.raises(DataError, match="no 'math' folder"):
        load_benchmark("math", root)
    with pytest.raises(DataError, match="unknown benchmark"):
        load_benchmark("squad", root)


def test_shipped_baseline_files_match_the_generator(tmp_path):
    generated = generate_benchmark_files(tmp_path)
    assert generated
    for path in generated:
        shipped = WORKFLOWS_DIR / path.relative_to(tmp_path)
        assert shipped.exists(), shipped
        assert json.loads(shipped.read_text()) == json.loads(path.read_text()), shipped
    for name in BENCHMARKS:
        for kind in KINDS:
            path = WORKFLOWS_DIR / name / f"{kind}.json"
            if path.exists():
                load_workflow(path, known_tools={"python": ["code", "stdin"], "calculator": ["expression"],
                                                 "retrieve": ["query", "passages", "k"]})


def answer_like_gold(task_name: str):
    """A scripted task model that answers each benchmark's question correctly (from the gold)."""
    task = load_benchmark(task_name, SHARED)
    golds = {}
    for ex in task.examples("test", 3):
        key = json.dumps({f: ex[f] for f in task.inputs}, sort_keys=True)[:300]
        golds[key] = ex
    def reply(req: LMRequest, i: int) -> str:
        user = req.messages[-1][1]
        for ex in golds.values():
            first_input = ex[task.inputs[-1]] if task_name != "hotpotqa" else ex["question"]
            text = first_input if isinstance(first_input, str) else ""
            if text and text[:80] in user:
                if task_name in ("humaneval", "mbpp"):
                    return "```python\n" + CANONICAL[task_name](ex) + "\n```"
                gold = ex[task.targets[0]]
                gold = gold[0] if isinstance(gold, list) else gold
                if task_name == "math":
                    return f"So the answer is \\boxed{{{gold}}}."
                return f"Reasoning...\nAnswer: {gold}"
        return "Answer: unknown"
    return task, reply


def _humaneval_solution(ex):
    rows = [json.loads(line) for line in open(SHARED / "humaneval/aflow/humaneval_test.jsonl")]
    row = next(r for r in rows if r["task_id"] == ex["id"])
    return row["prompt"] + row["canonical_solution"]


def _mbpp_solution(ex):
    rows = [json.loads(line) for line in open(SHARED / "mbpp/aflow/mbpp_test.jsonl")]
    return next(r for r in rows if str(r["task_id"]) == ex["id"])["code"]


CANONICAL = {"humaneval": _humaneval_solution, "mbpp": _mbpp_solution}


@needs_shared
@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_end_to_end_eval_with_a_scripted_model(name):
    task, reply = answer_like_gold(name)
    res = await aevaluate("cot", task, split="test", limit=3, model="scripted", providers={"scripted": ScriptedLM(default=reply)},
                          cache=False)
    assert res.n == 3 and res.calls == 3
    assert res.score == 1.0, [(r.prediction, r.feedback, r.error) for r in res.batch.results]
    assert all(r.trace is not None and r.trace.nodes["solve"].raw for r in res.batch.results)
    # a wrong answer scores 0 with feedback for the optimizer
    wrong = await aevaluate("io", task, split="test", limit=1, model="scripted",
                            providers={"scripted": ScriptedLM(default="Answer: 987654321")}, cache=False)
    assert wrong.score == 0.0 and (wrong.batch.results[0].feedback or name in ("humaneval", "mbpp"))

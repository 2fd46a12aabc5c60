import json

import pytest

from flowbot.scoring.result import MetricResult, call_metric
from flowbot.tasks import DataError, Task, build_baseline, resolve_metric


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"q": f"question {i}", "a": str(i)} for i in range(30)]


def test_ratio_split_is_seeded_disjoint_and_complete():
    t1 = Task("t", data=ROWS, inputs=["q"], targets=["a"], seed=3)
    t2 = Task("t", data=ROWS, inputs=["q"], targets=["a"], seed=3)
    t3 = Task("t", data=ROWS, inputs=["q"], targets=["a"], seed=4)
    assert t1.sizes() == {"train": 18, "val": 6, "test": 6}
    ids = [e["id"] for s in ("train", "val", "test") for e in t1.examples(s)]
    assert len(ids) == len(set(ids)) == 30
    assert [e["id"] for e in t1.examples("test")] == [e["id"] for e in t2.examples("test")]
    assert [e["id"] for e in t1.examples("test")] != [e["id"] for e in t3.examples("test")]


def test_separate_files_and_formats(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS[:10])
    (tmp_path / "val.csv").write_text("q,a\nhello,1\nbye,2\n", encoding="utf-8")
    (tmp_path / "test.json").write_text(json.dumps(ROWS[20:25]), encoding="utf-8")
    t = Task("t", data=str(train), val=str(tmp_path / "val.csv"), test=str(tmp_path / "test.json"),
             inputs=["q"], targets=["a"])
    assert t.sizes() == {"train": 10, "val": 2, "test": 5}
    assert t.examples("val")[0] == {"q": "hello", "a": "1", "id": "val-0"}


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS[:8]), tmp_path / "d.parquet")
    t = Task("t", data=str(tmp_path / "d.parquet"), inputs=["q"], targets=["a"], split=(1, 0, 1))
    assert sum(t.sizes().values()) == 8


def test_missing_target_names_file_and_line(tmp_path):
    rows = ROWS[:5]
    rows[3] = {"q": "no answer here"}
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as err:
        Task("t", data=str(path), inputs=["q"], targets=["a"])
    msg = str(err.value)
    assert "d.jsonl, line 4" in msg and "missing target field 'a'" in msg


def test_unknown_input_field_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS[:5])
    with pytest.raises(DataError, match="missing input field 'question'"):
        Task("t", data=str(path), inputs=["question"], targets=["a"])


def test_bad_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"q": "x", "a": "1"}\n{"q": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d.jsonl, line 2: invalid JSON"):
        Task("t", data=str(path), inputs=["q"], targets=["a"])


def test_field_cannot_be_input_and_target():
    with pytest.raises(DataError, match="both input and target"):
        Task("t", data=ROWS, inputs=["q", "a"], targets=["a"])


def test_task_file_yaml(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    (tmp_path / "metric.py").write_text("def score(example, prediction):\n    return prediction['a'] == example['a']\n")
    (tmp_path / "task.yaml").write_text("name: demo\ndata: data.jsonl\ninputs: [q]\ntarget: a\n"
                                        "metric: metric.py:score\nsplit: [0.5, 0.25, 0.25]\n")
    t = Task.from_file(tmp_path / "task.yaml")
    assert t.name == "demo" and t.sizes() == {"train": 15, "val": 8, "test": 7}
    assert t.metric({"a": "1"}, {"a": "1"}) is True


def test_task_file_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("inputs: [q]\ncolour: blue\n")
    with pytest.raises(DataError, match="unknown key"):
        Task.from_file(tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("inputs: [q\n")
    with pytest.raises(DataError, match="invalid YAML"):
        Task.from_file(tmp_path / "broken.yaml")


async def test_builtin_metrics_explain_misses():
    m = resolve_metric("exact_match", target="a", output="a")
    r = m({"a": "The Eiffel Tower"}, {"a": "eiffel tower"})
    assert r.score == 1.0 and r.feedback == ""
    miss = m({"a": "Paris"}, {"a": "Rome"})
    assert miss.score == 0.0 and "expected 'Paris'" in miss.feedback and "'Rome'" in miss.feedback
    aliases = resolve_metric("triviaqa_em", target="answers", output="answer")
    assert aliases({"answers": ["Onion", "Allium cepa"]}, {"answer": "allium cepa"}).score == 1.0
    label = resolve_metric("label", target="y", output="y", labels=["yes", "no"])
    assert label({"y": "no"}, {"y": "No."}).score == 1.0


def test_metric_by_path_and_errors(tmp_path):
    (tmp_path / "m.py").write_text("def good(e, p):\n    return 0.5\n")
    assert resolve_metric(f"{tmp_path / 'm.py'}:good", target="a", output="a")({}, {}) == 0.5
    with pytest.raises(DataError, match="has no callable 'nope'"):
        resolve_metric(f"{tmp_path / 'm.py'}:nope", target="a", output="a")
    with pytest.raises(DataError, match="cannot import module"):
        resolve_metric("no_such_module_xyz:f", target="a", output="a")
    with pytest.raises(DataError, match="neither a built-in"):
        resolve_metric("exactmatch", target="a", output="a")
    with pytest.raises(DataError, match="labels"):
        resolve_metric("label", target="a", output="a")


async def test_user_metric_return_shapes():
    ex, pred = {"a": "1"}, {"a": "1"}

    class Result:
        score = 0.25
        feedback = "close"

    async def async_metric(e, p):
        return 0.75

    assert (await call_metric(lambda e, p: True, ex, pred)).score == 1.0
    assert (await call_metric(lambda e, p: (0.5, "half"), ex, pred)) == MetricResult(0.5, "half")
    assert (await call_metric(lambda e, p: Result(), ex, pred)) == MetricResult(0.25, "close")
    assert (await call_metric(async_metric, ex, pred)).score == 0.75
    bad = await call_metric(lambda e, p: None, ex, pred)
    assert bad.score == 0.0 and "expected a number" in bad.error


async def test_pass_at_1_runs_tests_in_the_sandbox():
    m = resolve_metric("pass_at_1", target="test", output="code")
    ex = {"test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"}
    good = await m(ex, {"code": "```python\ndef add(a, b):\n    return a + b\n```"})
    bad = await m(ex, {"code": "def add(a, b):\n    return a - b\n"})
    assert good.score == 1.0 and bad.score == 0.0 and "tests failed" in bad.feedback


def test_seed_workflow_from_task_fields():
    t = Task("sentiment", data=[{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(10)],
             inputs=["text"], targets=["label"], metric="label", labels=["pos", "neg"])
    from flowbot.tasks import task_baseline

    wf = task_baseline(t, "cot")
    assert wf.sketch.inputs == ["text"] and wf.sketch.outputs == ["label"]
    node = wf.sketch.nodes[0]
    assert node.output.extract == "label" and node.output.labels == ["pos", "neg"]
    sc = build_baseline("sc", inputs=["text"], output="label", samples=3)
    assert len([n for n in sc.sketch.nodes if n.kind == "llm"]) == 3


async def test_sc_k_baseline_shares_its_greedy_sample_with_cot():
    """``sc3`` is three CoT samples and a vote; its first sample is the CoT call itself, so after the
    CoT baseline was scored, self-consistency pays for two new samples per example, not three."""
    from flowbot.api import aevaluate, resolve_seed
    from flowbot.lm.cache import ResponseCache
    from flowbot.testing import ScriptedLM

    task = Task("t", data=ROWS, inputs=["q"], targets=["a"], metric="numeric")
    sc3 = resolve_seed("sc3", task)
    llm = [n for n in sc3.sketch.nodes if n.kind == "llm"]
    assert len(llm) == 3 and [n.kind for n in sc3.sketch.nodes].count("merge") == 1
    assert resolve_seed("sc5", task).sketch.signature() == resolve_seed("sc", task).sketch.signature()
    cache = ResponseCache()
    lm = ScriptedLM(default=lambda req, i: "Answer: 3")
    cot = await aevaluate("cot", task, split="test", cache=cache, providers={"s": lm}, model="s")
    sc = await aevaluate("sc3", task, split="test", cache=cache, providers={"s": lm}, model="s")
    paid = (cot.usage["task"]["calls"], sc.usage["task"]["calls"])
    assert (cot.calls, sc.calls) == (6, 18) and paid == (6, 12)


def test_a_task_declares_its_tools_and_context_fields(tmp_path):
    rows = [{"passage": f"p{i}", "q": f"q{i}", "a": str(i)} for i in range(10)]
    plain = Task("t", data=rows, inputs=["passage", "q"], targets=["a"])
    assert plain.tools == [] and plain.context_fields == []  # a user's task gets no tools unless declared
    t = Task("t", data=rows, inputs=["passage", "q"], targets=["a"], tools=["python", "retrieve", "python"],
             context_fields="passage")
    assert t.tools == ["python", "retrieve"] and t.context_fields == ["passage"]
    with pytest.raises(DataError, match=r"context field\(s\) \['context'\] are not among the inputs"):
        Task("t", data=rows, inputs=["passage", "q"], targets=["a"], context_fields=["context"])
    with pytest.raises(DataError, match="tools entry 'calculator\\(expression\\)' is not a name"):
        Task("t", data=rows, inputs=["q"], targets=["a"], tools=["calculator(expression)"])
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "task.yaml").write_text(
        f"data: {data.name}\ninputs: [passage, q]\ntargets: [a]\ntools: [python]\ncontext_fields: [passage]\n",
        encoding="utf-8")
    from_file = Task.from_file(tmp_path / "task.yaml")
    assert from_file.tools == ["python"] and from_file.context_fields == ["passage"]


def test_benchmarks_declare_the_tools_that_make_sense_for_them():
    from flowbot.tasks.benchmarks import BENCHMARKS

    declared = {name: (set(b.tools), b.context_fields) for name, b in BENCHMARKS.items()}
    assert declared == {
        "gsm8k": ({"python", "calculator"}, ()), "math": ({"python", "calculator"}, ()),
        "hotpotqa": ({"retrieve"}, ("context",)), "drop": ({"python", "retrieve"}, ("passage",)),
        "fever": (set(), ()), "triviaqa": (set(), ()), "humaneval": ({"python"}, ()), "mbpp": ({"python"}, ()),
    }
    for b in BENCHMARKS.values():
        assert set(b.context_fields) <= set(b.inputs)
    from flowbot.tasks.benchmarks import load_benchmark

    gsm8k = load_benchmark("gsm8k")  # the bundled sample: the loaded Task carries the declaration
    assert gsm8k.tools == ["python", "calculator"] and gsm8k.context_fields == []


def test_tasks_do_not_know_the_optimizer_or_the_executor():
    import ast
    from pathlib import Path

    import flowbot.tasks

    for path in Path(flowbot.tasks.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("flowbot.optim", "flowbot.runtime.executor")), path

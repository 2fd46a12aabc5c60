"""DROP EM/F1: hand-worked cases from the official drop_eval.py definition, and agreement with the
official implementation where a package ships it (lm-eval's tasks/drop/utils.py is AllenAI's
drop_eval code; the test is skipped when lm-eval is not installed)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from flowbot.tasks.metrics import aflow_drop_f1, drop_em, drop_f1, drop_metrics, drop_score
from flowbot.tasks.metrics.drop import drop_normalize, split_references

from .metrics_data import read_jsonl


@pytest.mark.parametrize("span, normalized", [
    ("1,000", "1000.0"),
    ("2", "2.0"),
    ("2.0", "2.0"),
    ("$5.5", "55.0"),  # not a float as written, so its punctuation (the point too) is removed
    ("1e3", "1000.0"),
    ("The well-known 3-yard run.", "well known 3.0 yard run"),
    ("Germany", "germany"),
])
def test_drop_normalization(span: str, normalized: str) -> None:
    assert drop_normalize(span) == normalized


@pytest.mark.parametrize("pred, gold, em, f1", [
    ("1,000", "1000", 1.0, 1.0),
    ("2.0", "2", 1.0, 1.0),
    ("well-known", "well known", 1.0, 1.0),
    ("3 touchdowns", "3", 0.0, 0.67),  # P 1/2, R 1, rounded to 2 decimals
    ("4 touchdowns", "3", 0.0, 0.0),  # gold has a number the prediction lacks
    ("4 yards", "3 yards", 0.0, 0.0),  # shared "yards" does not help
    ("$5.5", "5.5", 0.0, 0.0),  # official quirk: "$5.5" -> 55.0
    ("Tom Brady", "Brady", 0.0, 0.67),
    ("", "5", 0.0, 0.0),
    ("", "", 1.0, 1.0),
    # multi-span answers: one-to-one alignment, mean over max(#pred, #gold)
    (["Germany", "the UK"], ["UK", "Germany"], 1.0, 1.0),
    (["Germany"], ["UK", "Germany"], 0.0, 0.5),
    (["Germany", "France", "Italy"], ["Germany", "France"], 0.0, 0.67),
    # greedy row-by-row matching would pair "red blue" with "red blue green" (0.8) and leave
    # "green" with "red" (0); the optimal matching gives (2/3 + 1/2) / 2 = 0.583 -> 0.58
    (["red blue green", "red"], ["red blue", "green"], 0.0, 0.58),
    ("Germany and France", ["Germany", "France"], 0.0, 0.25),  # one span vs two: F1 1/2, over 2
])
def test_drop_metrics_cases(pred: Any, gold: Any, em: float, f1: float) -> None:
    assert drop_metrics(pred, gold) == (em, f1)
    assert drop_em(pred, gold) == em
    assert drop_f1(pred, gold) == f1


def test_drop_score_is_max_over_references() -> None:
    assert drop_score("88", "88|33") == (1.0, 1.0)
    assert drop_score("33", "88|33") == (1.0, 1.0)
    assert drop_score("34", "88|33") == (0.0, 0.0)
    assert drop_score("Hernán Peraza", "Hernán Peraza The Elder") == (0.0, 0.8)
    assert drop_score("Hernán Peraza", "Hernán Peraza The Elder|Hernán Peraza") == (1.0, 1.0)
    # alternatives can be multi-span answers
    assert drop_score(["UK", "Germany"], [["Germany", "UK"], "France"]) == (1.0, 1.0)
    assert split_references("a||b| ") == ["a", "b"]
    with pytest.raises(ValueError, match="no DROP reference"):
        drop_score("x", " | ")


def test_aflow_variant_uses_squad_f1_and_splits_prediction() -> None:
    assert aflow_drop_f1("Colts|Indianapolis", "Indianapolis|Colts") == 1.0
    assert aflow_drop_f1("4 yards", "3 yards") == pytest.approx(0.5)  # official DROP: 0
    assert aflow_drop_f1("$5.5", "5.5") == 1.0  # official DROP: 0


# --------------------------------------------------------------------------- official agreement


def _official_drop() -> ModuleType:
    """lm-eval's copy of drop_eval, loaded by path so lm-eval's heavy package init is not run."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lm-eval (which ships the official DROP evaluation code) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "tasks" / "drop" / "utils.py"
    if not path.exists():
        pytest.skip(f"lm-eval has no {path}")
    module_spec = importlib.util.spec_from_file_location("_official_drop_eval", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _variants(gold: str, other: str, rng: random.Random) -> list[Any]:
    """Predictions a model might give for ``gold``: right, reformatted, partial, wrong."""
    words = gold.split()
    out: list[Any] = [gold, f"the {gold}", gold.upper() + ".", other, "", f"{gold} {other}"]
    if len(words) > 1:
        out += [" ".join(words[:-1]), "-".join(words), " ".join(reversed(words))]
    try:
        value = float(gold.replace(",", ""))
    except ValueError:
        value = None
    if value is not None:
        n = int(value) if value.is_integer() else value
        out += [f"{n:,}", f"{value}", f"{n + 1}", f"${gold}", f"{gold} yards", f"about {n} points"]
    spans = [s for s in gold.split(" and ") if s.strip()]
    if len(spans) > 1:
        shuffled = spans[:]
        rng.shuffle(shuffled)
        out += [shuffled, spans[:-1], spans + [other], ", ".join(spans)]
    return out


def _pairs(rows: list[dict[str, Any]], rng: random.Random) -> list[tuple[Any, Any, str]]:
    pairs = []
    for i, row in enumerate(rows):
        refs = [r for r in row["ref_text"].split("|") if r.strip()]
        other = rows[(i + 7) % len(rows)]["ref_text"].split("|")[0]
        for ref in refs:
            spans = [s for s in ref.split(" and ") if s.strip()]
            golds: list[Any] = [ref] + ([spans] if len(spans) > 1 else [])
            for gold in golds:
                for pred in _variants(ref, other, rng):
                    pairs.append((pred, gold, row["ref_text"]))
    return pairs


def test_agrees_with_official_drop_eval_on_shared_data() -> None:
    official = _official_drop()
    rows = read_jsonl("drop/aflow/drop_validate.jsonl") + read_jsonl("drop/aflow/drop_test.jsonl")[:200]
    pairs = _pairs(rows, random.Random(0))
    partial = 0
    for pred, gold, _ in pairs:
        ours = drop_metrics(pred, gold)
        em, f1 = official.get_metrics(pred, gold)
        assert ours == (float(em), float(f1)), (pred, gold)
        partial += 0.0 < ours[1] < 1.0
    # the sample must exercise more than all-or-nothing cases to mean something
    assert len(pairs) > 3000 and partial > 300


def test_max_over_references_agrees_with_official_max() -> None:
    official = _official_drop()
    rows = read_jsonl("drop/aflow/drop_validate.jsonl")
    for pred, _, ref_text in _pairs(rows, random.Random(1))[::3]:
        refs = [(r,) for r in ref_text.split("|")]
        best = [0.0, 0.0]
        for ref in refs:
            em, f1 = official.get_metrics(pred, ref)
            if ref[0].strip():
                best = [max(best[0], em), max(best[1], f1)]
        assert drop_score(pred, ref_text) == (best[0], best[1])

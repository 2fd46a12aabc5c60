"""The real-model runs committed under results/ reproduce from their caches: re-scoring a run's best
workflow pays nothing and never loads the model."""

from pathlib import Path

import pytest

import flowbot
from flowbot.lm.cache import ResponseCache

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "datasets"
SMOKE = ROOT / "results" / "smoke" / "drop-flowbot-1.5b"

pytestmark = pytest.mark.skipif(not (DATA / "drop").is_dir(), reason="needs the shared DROP data (../shared/datasets)")


async def test_rescoring_a_committed_run_pays_nothing_and_loads_no_model(tmp_path):
    pytest.importorskip("llama_cpp")
    import json

    from flowbot.lm.local import LlamaCppProvider

    # a provider that cannot load anything: no weights in its folder and no fetching
    provider = LlamaCppProvider("qwen2.5-coder-1.5b", models_dir=tmp_path, auto_pull=False)
    summary = json.loads((SMOKE / "summary.json").read_text())
    cache = ResponseCache(SMOKE / "cache.sqlite")
    try:
        res = await flowbot.aevaluate(str(SMOKE / "best.json"), "drop", split="val", limit=6, data_dir=DATA,
                                      cache=cache, providers={"qwen2.5-coder-1.5b": provider},
                                      model="qwen2.5-coder-1.5b", concurrency=1)
    finally:
        cache.close()
    assert provider._engine is None  # the model was never loaded
    assert res.usage["task"]["calls"] == 0 and res.usage["task"]["cached_calls"] == 6
    assert res.score == pytest.approx(summary["best"]["val_score"])


@pytest.mark.parametrize("method", ["flowbot", "aflow"])
async def test_the_drop_protocol_runs_reproduce_their_test_scores_from_their_caches(tmp_path, method):
    """Issue 16's table is re-printed from the committed run directories: each search method's best
    workflow re-scored on the 150 test items pays nothing, loads no model, and gives its test score."""
    pytest.importorskip("llama_cpp")
    import json

    from flowbot.lm.local import LlamaCppProvider

    run = ROOT / "results" / "drop-1.5b" / method
    provider = LlamaCppProvider("qwen2.5-coder-1.5b", models_dir=tmp_path, auto_pull=False)
    summary = json.loads((run / "summary.json").read_text())
    cache = ResponseCache(run / "cache.sqlite")
    try:
        res = await flowbot.aevaluate(str(run / "best.json"), "drop", split="test", limit=150, data_dir=DATA,
                                      cache=cache, providers={"qwen2.5-coder-1.5b": provider},
                                      model="qwen2.5-coder-1.5b", concurrency=4)
    finally:
        cache.close()
    assert provider._engine is None and res.usage["task"]["calls"] == 0
    assert res.n == 150 and res.score == pytest.approx(summary["test"]["score"])

"""The block-aligned prefix-reuse rules (pure functions; the real-model test checks the outputs)."""

from __future__ import annotations

from flowbot.lm.local.kvreuse import Snapshot, SnapshotCache, aligned_keep, common_prefix


def test_common_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


def test_keeps_only_whole_blocks_computed_block_aligned():
    cached = list(range(1000))
    new = list(range(900)) + [-1] * 50
    assert aligned_keep(cached, canonical=1000, tokens=new, block=256) == 768  # 900 shared -> 3 blocks
    assert aligned_keep(cached, canonical=512, tokens=new, block=256) == 512  # beyond 512 was not aligned
    assert aligned_keep(cached, canonical=1000, tokens=[-1] + new, block=256) == 0


def test_always_leaves_the_last_block_to_evaluate():
    cached = list(range(1024))
    assert aligned_keep(cached, 1024, list(range(1024)), 256) == 768  # identical prompt
    assert aligned_keep(cached, 1024, list(range(1000)), 256) == 768  # a prefix of the cache
    assert aligned_keep(cached, 1024, list(range(100)), 256) == 0


def _snap(ids, size):
    return Snapshot(tuple(ids), b"x" * size)


def test_snapshot_cache_picks_the_longest_aligned_match_and_evicts_lru():
    cache = SnapshotCache(capacity_bytes=250)
    a, b = _snap(range(0, 512), 100), _snap(list(range(0, 256)) + [7] * 256, 100)
    cache.add(a)
    cache.add(b)
    found = cache.best(list(range(0, 600)), block=256)
    assert found is not None and found[0] is a and found[1] == 512
    assert cache.best([9] * 600, block=256) is None
    cache.add(_snap([3] * 512, 100))  # over capacity: the least recently used (b) goes
    assert tuple(b.ids) not in cache and a.ids in cache and len(cache) == 2 and cache.nbytes == 200
    cache.add(_snap([4] * 512, 1000))  # bigger than the whole cache: not kept
    assert len(cache) == 2

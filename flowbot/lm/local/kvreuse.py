"""Prompt-prefix reuse that never changes the output.

llama-cpp-python reuses the KV cache of the previous prompt up to the longest common prefix. That
saves most of the prompt work when prompts share their beginning (instruction, demos), but it
changes the numbers: a token's keys and values come out slightly different depending on which
batch it was computed in, so the same request could give a different text depending on what ran
before it (measured: 3 of 4 greedy GSM8K answers changed between a cold and a warm run).

Here the prompt is always evaluated in blocks of ``block`` tokens counted from position 0 — the
way a cold run evaluates it — and only whole blocks that were computed that way are reused. The
result is bit-identical to a cold run, whatever ran before; at most ``block - 1`` tokens of an
otherwise reusable prefix are recomputed.

Prompts alternating between different prefixes (two workflow nodes, each with its own demos)
would evict each other; :class:`SnapshotCache` keeps the evicted prefixes' KV cells (only the
sequence's cells, ~12 kB per token for the 0.5B, ~28 kB for the 1.5B) and swaps them back in.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    import numpy as np  # comes with llama-cpp-python; vectorized, prompts run to thousands of tokens

    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def aligned_keep(cached: Sequence[int], canonical: int, tokens: Sequence[int], block: int) -> int:
    """How many leading cached tokens to keep for ``tokens``: whole blocks within the cached
    prefix that was computed block-aligned (``canonical``), and always fewer than ``len(tokens)``
    so the last block is evaluated afresh (that produces the logits to sample from)."""
    keep = min(common_prefix(cached, tokens), canonical) // block * block
    if keep >= len(tokens):
        keep = (len(tokens) - 1) // block * block
    return max(0, keep)


@dataclass(frozen=True)
class Snapshot:
    ids: tuple[int, ...]  # the tokens whose KV cells ``data`` holds (a block-aligned prompt prefix)
    data: bytes


class SnapshotCache:
    """Least-recently-used KV snapshots of block-aligned prompt prefixes, bounded in bytes."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self._items: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, ids: tuple[int, ...]) -> bool:
        return ids in self._items

    def add(self, snapshot: Snapshot) -> None:
        if len(snapshot.data) > self.capacity_bytes:
            return
        old = self._items.pop(snapshot.ids, None)
        if old is not None:
            self.nbytes -= len(old.data)
        self._items[snapshot.ids] = snapshot
        self.nbytes += len(snapshot.data)
        while self.nbytes > self.capacity_bytes:
            _, evicted = self._items.popitem(last=False)
            self.nbytes -= len(evicted.data)

    def best(self, tokens: Sequence[int], block: int) -> tuple[Snapshot, int] | None:
        """The snapshot sharing the most whole blocks with ``tokens``, and how many tokens to keep."""
        found: tuple[Snapshot, int] | None = None
        for snap in self._items.values():
            keep = aligned_keep(snap.ids, len(snap.ids), tokens, block)
            if keep > 0 and (found is None or keep > found[1]):
                found = (snap, keep)
        if found is not None:
            self._items.move_to_end(found[0].ids)
        return found


@lru_cache(maxsize=None)
def reusing_llama_class(llama_cpp: Any) -> type:
    """A ``llama_cpp.Llama`` subclass whose prompt reuse is block-aligned (built lazily, because
    llama-cpp-python is an optional dependency)."""

    class ReusingLlama(llama_cpp.Llama):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, block: int, snapshot_bytes: int = 0, **kwargs: Any):
            super().__init__(*args, n_batch=block, n_ubatch=block, **kwargs)
            self._block = block
            self._canonical = 0  # leading KV cells computed block-aligned, as a cold run would
            self._snapshots = SnapshotCache(snapshot_bytes) if snapshot_bytes > 0 else None

        def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
            tokens = list(tokens)
            if kwargs.get("reset", True):
                self._prepare(tokens)
                # Only true once the prompt is evaluated; forget_reuse() undoes it on failure.
                self._canonical = len(tokens) // self._block * self._block
            return super().generate(tokens, *args, **kwargs)

        def forget_reuse(self) -> None:
            """After a failed call the cache state is unknown: reuse nothing next time."""
            self._canonical = 0
            self.n_tokens = 0

        def _prepare(self, tokens: list[int]) -> None:
            keep = aligned_keep(self._input_ids, self._canonical, tokens, self._block) if self.n_tokens else 0
            if self._snapshots is not None:
                found = self._snapshots.best(tokens, self._block)
                if found is not None and found[1] > keep:
                    self._swap_out()
                    keep = found[1] if self._restore(found[0]) else 0
                elif self._canonical - keep >= self._block:
                    self._swap_out()  # about to overwrite a reusable prefix: keep a copy
            self.n_tokens = keep  # llama-cpp-python then reuses at most these cells

        def _swap_out(self) -> None:
            n = self._canonical
            ids = tuple(int(t) for t in self.input_ids[:n])
            if n == 0 or self._snapshots is None or ids in self._snapshots:
                return
            self._ctx.kv_cache_seq_rm(0, n, -1)  # generated tokens' cells are never reused
            self.n_tokens = min(self.n_tokens, n)
            size = llama_cpp.llama_state_seq_get_size(self.ctx, 0)
            buf = (ctypes.c_uint8 * size)()
            written = llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, 0)
            if written:
                self._snapshots.add(Snapshot(ids, bytes(buf)[:written]))

        def _restore(self, snap: Snapshot) -> bool:
            self._ctx.kv_cache_seq_rm(0, 0, -1)
            buf = (ctypes.c_uint8 * len(snap.data)).from_buffer_copy(snap.data)
            if not llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(snap.data), 0):
                self.forget_reuse()
                return False
            n = len(snap.ids)
            self.input_ids[:n] = snap.ids
            self.n_tokens = self._canonical = n
            self._requires_eval = True
            return True

    return ReusingLlama

"""Prompt prefixes for the llama.cpp engine: llama.cpp sequence states, LRU under a byte budget.

An entry is the state (`llama_state_seq_get_data`) of a sequence that had fed exactly the
tokens `toks` of its prompt, where len(toks) is a multiple of `block`. A later prompt that
shares the first n tokens with an entry may start from that state, trimmed to n rounded down
to whole blocks: the engine feeds every prompt in decodes that end at multiples of `block`, so
the K/V of a whole block depends only on the tokens up to its end, and a prompt that takes it
from an entry gets the very bytes it would have computed itself.

Only the longest state of a chain is kept: an entry whose tokens start another one's is
redundant (the longer one, trimmed, serves the same prompts) and is dropped when that one
arrives. No llama.cpp here: pure logic over token arrays and bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


class PrefixStore:
    def __init__(self, block: int = 16, budget: int = 0):
        if block < 1:
            raise ValueError("block must be at least one token")
        self.block, self.budget = block, budget
        self.entries: OrderedDict[int, tuple[np.ndarray, bytes]] = OrderedDict()
        self.used = 0
        self._ids = 0

    def longest(self, tokens: Sequence[int], limit: int) -> tuple[int, bytes | None]:
        """(n, state): the most whole blocks of tokens[:limit] some entry holds, and its state
        (which may hold more tokens than n: the caller trims it to n)."""
        if not self.budget or limit < self.block or not self.entries:
            return 0, None
        want = np.asarray(tokens[:limit], dtype=np.int32)
        best, best_id = 0, None
        for eid, (toks, _) in self.entries.items():
            n = common_prefix(toks, want) // self.block * self.block
            if n > best:
                best, best_id = n, eid
        if best_id is None:
            return 0, None
        self.entries.move_to_end(best_id)
        return best, self.entries[best_id][1]

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether some entry already holds all of `tokens` (so keeping them again is a waste)."""
        want = np.asarray(tokens, dtype=np.int32)
        for eid, (toks, _) in self.entries.items():
            if len(toks) >= len(want) and common_prefix(toks, want) == len(want):
                self.entries.move_to_end(eid)
                return True
        return False

    def add(self, tokens: Sequence[int], state: bytes) -> None:
        if not self.budget or not tokens or len(tokens) % self.block:
            return
        toks = np.asarray(tokens, dtype=np.int32)
        for eid, (old, _) in list(self.entries.items()):  # the shorter states of this chain
            if len(old) < len(toks) and common_prefix(old, toks) == len(old):
                self._pop(eid)
        self._ids += 1
        self.entries[self._ids] = (toks, state)
        self.used += len(state) + toks.nbytes
        while self.used > self.budget and self.entries:
            self._pop(next(iter(self.entries)))

    def _pop(self, eid: int) -> None:
        toks, state = self.entries.pop(eid)
        self.used -= len(state) + toks.nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.used = 0

    def __len__(self) -> int:
        return len(self.entries)

"""Where generation snapshots live: one /dev/shm segment owned by the llm worker (issue 5).

The segment is an arena of `budget` bytes (a sparse file: pages cost memory once written).
A snapshot gets a region laid out exactly like the cache it came from, [layers, 2, kv_heads,
capacity, head_dim], with only its first n positions written. Two reasons:

- Fresh shared-memory pages are expensive here (4 KiB pages, no huge pages for shmem: a first
  touch costs ~10 us a page, 47 MB of K/V ~0.1-0.2 s). Regions are reused, so in steady state
  a snapshot is one copy into pages that are already there.
- Restore maps its region copy-on-write (MAP_PRIVATE) as the new request's cache: no copy at
  all; the request's own writes (new tokens) go to private pages, the snapshot stays intact
  and can be restored again. A region stays pinned while such a mapping lives, so it is never
  handed to another snapshot under a request that still reads it.

The segment is unlinked as soon as it is mapped (the worker keeps its fd and mapping, and
/proc/PID/maps still names it): its memory goes back to the system when the worker exits, how
ever it exits, SIGKILL included, and no name is left behind in /dev/shm to accumulate. Names
start with `prefix` (per AIOS_HOME), and a starting worker still removes any of its home's that
a crash in the instant between create and unlink could have left.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import weakref
from pathlib import Path

import numpy as np
import torch

SHM_DIR = "/dev/shm"
PREFIX = "aiosd-kv-"  # not protocol.SHM_PREFIX ("aios-"): no ShmRef can name these
PAGE = mmap.ALLOCATIONGRANULARITY


def home_prefix(home: str | Path) -> str:
    """The segment name prefix of the daemon living in `home` (one llm worker per home)."""
    return PREFIX + hashlib.blake2b(str(Path(home).resolve()).encode(), digest_size=6).hexdigest() + "-"


def clean_stale(prefix: str) -> int:
    """Unlink every segment whose name starts with prefix (a dead worker's); how many."""
    n = 0
    for name in os.listdir(SHM_DIR):
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                n += 1
            except FileNotFoundError:
                pass
    return n


class Region:
    """One snapshot's place in the arena: `shape`/`dtype` of the cache it mirrors."""

    def __init__(self, arena: Arena, off: int, nbytes: int, shape: tuple, dtype: torch.dtype):
        self.arena, self.off, self.nbytes, self.shape, self.dtype = arena, off, nbytes, shape, dtype
        self.released = False

    def tensor(self) -> torch.Tensor:
        """The region through the arena's shared mapping (writes land in the segment)."""
        raw = self.arena.buf[self.off : self.off + _size(self.shape, self.dtype)]
        return torch.from_numpy(raw).view(self.dtype).view(self.shape)

    def adopt(self) -> torch.Tensor:
        """A private copy-on-write mapping of the region, to use as a live cache."""
        return self.arena.map_private(self)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.arena.release(self)


class Arena:
    def __init__(self, prefix: str, size: int):
        self.size = max(PAGE, size // PAGE * PAGE)
        self.path = os.path.join(SHM_DIR, f"{prefix}{os.getpid()}")
        fd = os.open(self.path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, self.size)
            self.mm = mmap.mmap(fd, self.size)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.unlink(self.path)  # nothing to clean up later, whatever kills the worker
        self.fd = fd  # kept: copy-on-write maps are made from it
        self.buf = np.frombuffer(self.mm, dtype=np.uint8)
        self.free: list[tuple[int, int]] = [(0, self.size)]  # (offset, length), sorted
        self.pins: dict[int, int] = {}  # region offset -> live copy-on-write maps
        self.held: dict[int, Region] = {}  # released by the store, still pinned
        self.closed = False

    def alloc(self, shape: tuple, dtype: torch.dtype) -> Region | None:
        """A region for a cache of `shape`, or None if no free range is large enough."""
        need = -(-_size(shape, dtype) // PAGE) * PAGE
        for i, (off, length) in enumerate(self.free):
            if length >= need:
                self.free[i : i + 1] = [(off + need, length - need)] if length > need else []
                return Region(self, off, need, tuple(shape), dtype)
        return None

    def release(self, r: Region) -> None:
        if self.pins.get(r.off):
            self.held[r.off] = r  # freed when its last copy-on-write map goes
            return
        self._give_back(r.off, r.nbytes)

    def _give_back(self, off: int, length: int) -> None:
        self.free.append((off, length))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for o, n in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((o, n))
        self.free = merged

    def map_private(self, r: Region) -> torch.Tensor:
        mm = mmap.mmap(self.fd, r.nbytes, offset=r.off, access=mmap.ACCESS_COPY)
        self.pins[r.off] = self.pins.get(r.off, 0) + 1
        weakref.finalize(mm, self._unpin, r.off)
        raw = np.frombuffer(mm, dtype=np.uint8)[: _size(r.shape, r.dtype)]
        return torch.from_numpy(raw).view(r.dtype).view(r.shape)

    def _unpin(self, off: int) -> None:
        self.pins[off] -= 1
        if not self.pins[off]:
            del self.pins[off]
            held = self.held.pop(off, None)
            if held is not None and not self.closed:
                self._give_back(held.off, held.nbytes)

    def used(self) -> int:
        return self.size - sum(n for _, n in self.free)

    def close(self) -> None:
        """Close the segment; its memory goes when the last mapping does."""
        if self.closed:
            return
        self.closed = True
        os.close(self.fd)


def _size(shape: tuple, dtype: torch.dtype) -> int:
    return int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()

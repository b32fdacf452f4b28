"""Where LMDB keeps a value in its data file, read from the B-tree pages of a read transaction's snapshot.

An LMDB value longer than a page lives in a contiguous run of overflow pages. py-lmdb's get touches every page of
it one after another (its `preload`, GIL released), so an uncached latent (ten 4 KB pages) is ten disk reads in
sequence. Knowing where each value of a call lies lets the reader ask the kernel for all of them at once
(posix_fadvise WILLNEED: one request per value, all in flight together) and read only the bytes it needs.

A place is found by an exact key match in a leaf of the snapshot of a read transaction that stays open while the
value is read (LMDB does not reuse pages a reader still holds), and `read` checks the header of the value's first
overflow page (its page number, type and page count) before trusting the bytes; a failed check sends the caller
to py-lmdb. Every read of the B-tree pages is bounds-checked, and a snapshot that moved on (its meta page
rewritten) or a file that is not LMDB 0.9 gives no places rather than an error.

On-disk layout read here: LMDB 0.9's (mdb.c; the version py-lmdb bundles), 64-bit little-endian builds:
  page header (16 B): pgno u64, pad u16, flags u16, lower u16, upper u16; node offsets (u16) follow it
  node (8 B + key + data): lo u16, hi u16, flags u16, ksize u16; a branch node's child page is lo | hi << 16 |
    flags << 32; a leaf node's data size is lo | hi << 16; F_BIGDATA: its data is the first overflow page's number
  meta pages 0 and 1: magic u32, version u32, address u64, mapsize u64, MDB_db free, MDB_db main, last_pg u64,
    txnid u64 (from offset 16); a named database is a main-DB leaf (F_SUBDATA) whose data is its MDB_db
  MDB_db (48 B): pad u32, flags u16, depth u16, branch_pages, leaf_pages, overflow_pages, entries, root (u64 each)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import struct
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

_HDR = 16  # PAGEHDRSZ
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_LEAF2 = 0x01, 0x02, 0x04, 0x20
_F_BIGDATA, _F_SUBDATA = 0x01, 0x02
_MAGIC, _VERSION = 0xBEEFC0DE, 1
_PAGE = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper
_NODE = struct.Struct("<HHHH")  # lo, hi, flags, ksize
_OVERFLOW = struct.Struct("<QHHI")  # pgno, pad, flags, pages: the header of a value's first overflow page
_U64 = struct.Struct("<Q")
_META_MAGIC = struct.Struct("<II")  # at _HDR
_MAIN_ROOT_AT = _HDR + 24 + 48 + 40  # md_root of the main DB's MDB_db
_TXNID_AT = _HDR + 24 + 2 * 48 + 8
_DB_ROOT_AT = 40  # md_root within an MDB_db
_P_INVALID = (1 << 64) - 1
_MAX_DEPTH = 32  # a B-tree of 2^64 keys is shallower; a deeper walk means the pages changed under it


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
try:
    from . import _lmdbwalk  # the walk, residency and checked reads in C (setup.py builds it where it can)
except ImportError:
    _lmdbwalk = None
WALK_IN_C = True  # use _lmdbwalk where built (tests switch it off to check the Python versions)
SUPPORTED = (sys.byteorder == "little" and struct.calcsize("P") == 8 and hasattr(os, "posix_fadvise")
             and _LIBC is not None)


class _Moved(Exception):
    """The pages read do not form the snapshot asked for (a writer moved on, or the file is not LMDB 0.9)."""


class ValueLocator:
    """Finds (file offset, length) of values in an LMDB environment's data file, asks the kernel to read them, and
    reads checked spans of them.

    `locate` must be called while a read transaction whose `id()` is passed stays open: LMDB does not reuse the
    pages of a snapshot a reader still holds."""

    def __init__(self, data_file: Path, page_size: int):
        if not SUPPORTED:
            raise OSError("the LMDB value locator needs a 64-bit little-endian build with posix_fadvise and mincore")
        self.page_size = page_size
        self._fd = os.open(data_file, os.O_RDONLY)
        self._lock = threading.Lock()
        self._map: Optional[mmap.mmap] = None
        self._base = 0
        self._remap()

    def close(self) -> None:
        self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _remap(self) -> None:
        """Map the whole data file as it is now (LMDB grows it). The old map is not closed: another thread may be
        reading it, and it goes when the last reference does."""
        with self._lock:
            size = os.fstat(self._fd).st_size
            if size == 0 or (self._map is not None and len(self._map) >= size):
                return
            new = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
            if hasattr(new, "madvise"):
                new.madvise(mmap.MADV_RANDOM)  # a cold B-tree page is one page read, not the device's read-ahead
            self._base = np.frombuffer(new, np.uint8).ctypes.data  # the map's address, for mincore
            self._map = new

    def _page(self, pgno: int) -> int:
        """Offset of page `pgno` in the map (mapped past the file's current end if it grew)."""
        off = pgno * self.page_size
        if self._map is None or off + self.page_size > len(self._map):
            self._remap()
            if self._map is None or off + self.page_size > len(self._map):
                raise _Moved(f"page {pgno} is past the end of the data file")
        return off

    def _nodes(self, off: int) -> tuple[int, int]:
        """(flags, number of nodes) of the page at `off`."""
        _, _, flags, lower, upper = _PAGE.unpack_from(self._map, off)
        if flags & _P_LEAF2 or not flags & (_P_BRANCH | _P_LEAF) or lower < _HDR or lower > upper \
                or upper > self.page_size:
            raise _Moved(f"page at {off} is not a branch or leaf page")
        return flags, (lower - _HDR) >> 1

    def _node(self, off: int, i: int) -> tuple[int, int, int, bytes, int]:
        """(lo, hi, flags, key, offset of the data) of node `i` of the page at `off`."""
        m = self._map
        ptr = struct.unpack_from("<H", m, off + _HDR + 2 * i)[0]
        if ptr < _HDR or ptr + _NODE.size > self.page_size:
            raise _Moved(f"node {i} of page at {off} points outside it")
        lo, hi, flags, ksize = _NODE.unpack_from(m, off + ptr)
        key_at = off + ptr + _NODE.size
        if key_at + ksize > off + self.page_size:
            raise _Moved(f"key of node {i} of page at {off} runs past it")
        return lo, hi, flags, m[key_at:key_at + ksize], key_at + ksize

    def _step(self, pgno: int, key: bytes) -> tuple[bool, Optional[tuple[int, int, int]], int]:
        """One level of the search for `key` from page `pgno`: (True, leaf node or None, 0) on a leaf page, where
        a leaf node is (lo | hi << 16, flags, data offset); (False, None, child page) on a branch page."""
        off = self._page(pgno)
        flags, n = self._nodes(off)
        if flags & _P_LEAF:
            lo, hi = 0, n - 1
            while lo <= hi:
                mid = (lo + hi) >> 1
                nlo, nhi, nflags, k, data_at = self._node(off, mid)
                if k == key:
                    return True, (nlo | nhi << 16, nflags, data_at), 0
                if k < key:
                    lo = mid + 1
                else:
                    hi = mid - 1
            return True, None, 0
        # branch: the child of the last node whose key is <= key; node 0 stands for every smaller key
        lo, hi, child = 1, n - 1, 0
        while lo <= hi:
            mid = (lo + hi) >> 1
            if self._node(off, mid)[3] <= key:
                child, lo = mid, mid + 1
            else:
                hi = mid - 1
        clo, chi, cflags, _, _ = self._node(off, child)
        return False, None, clo | chi << 16 | cflags << 32

    def _leaves(self, root: int, keys: Sequence[bytes]) -> list[Optional[tuple[int, int, int]]]:
        """The leaf node of each key in the tree at page `root` (None: absent), walked one level at a time for all
        keys together: each level's pages are asked of the kernel at once before any is read, so a cold B-tree
        costs one disk wait per level, not one per key and level. In C (`_lmdbwalk`) where it was built."""
        if _lmdbwalk is not None and WALK_IN_C:
            for _ in range(2):
                try:
                    return _lmdbwalk.leaves(self._map, self.page_size, root, list(keys), self._fd)
                except ValueError as e:
                    if not str(e).startswith("past end"):
                        raise _Moved(str(e)) from e
                    self._remap()  # the file grew past the map: once more over the new map
            raise _Moved("a page lies past the end of the data file")
        out: list[Optional[tuple[int, int, int]]] = [None] * len(keys)
        at = {i: root for i in range(len(keys))}
        for _ in range(_MAX_DEPTH):
            if not at:
                return out
            self._advise_pages(set(at.values()))
            deeper = {}
            for i, pgno in at.items():
                is_leaf, node, child = self._step(pgno, keys[i])
                if is_leaf:
                    out[i] = node
                else:
                    deeper[i] = child
            at = deeper
        raise _Moved(f"no leaf within {_MAX_DEPTH} levels")

    def _advise_pages(self, pgnos) -> None:
        for pgno in pgnos:
            os.posix_fadvise(self._fd, pgno * self.page_size, self.page_size, os.POSIX_FADV_WILLNEED)

    def _root_of(self, txn_id: int, db_name: bytes) -> Optional[int]:
        """Root page of the named database in the snapshot `txn_id` (None: empty database)."""
        for meta in (0, 1):
            off = self._page(meta)
            if _META_MAGIC.unpack_from(self._map, off + _HDR) != (_MAGIC, _VERSION):
                raise _Moved("not an LMDB 0.9 data file")
            if _U64.unpack_from(self._map, off + _TXNID_AT)[0] != txn_id:
                continue
            main_root = _U64.unpack_from(self._map, off + _MAIN_ROOT_AT)[0]
            if _U64.unpack_from(self._map, off + _TXNID_AT)[0] != txn_id:
                raise _Moved("meta page rewritten while read")
            if main_root == _P_INVALID:
                return None
            found = self._leaves(main_root, [db_name])[0]
            if found is None:
                return None
            size, flags, data_at = found
            if not flags & _F_SUBDATA or size != 48:
                raise _Moved(f"{db_name!r} is not a named database")
            root = _U64.unpack_from(self._map, data_at + _DB_ROOT_AT)[0]
            return None if root == _P_INVALID else root
        raise _Moved(f"snapshot {txn_id} is no longer a meta page's")

    def locate(self, txn_id: int, db_name: bytes, keys: Sequence[bytes]) -> list[Optional[tuple[int, int]]]:
        """(file offset, length) of each key's value in `db_name` as of snapshot `txn_id`; None where the key is
        absent, the value sits inside its leaf page, or the pages no longer form that snapshot."""
        try:
            root = self._root_of(txn_id, db_name)
            if root is None:
                return [None] * len(keys)
            out: list[Optional[tuple[int, int]]] = []
            for found in self._leaves(root, keys):
                if found is None or not found[1] & _F_BIGDATA:
                    out.append(None)
                    continue
                size, _, data_at = found
                first = _U64.unpack_from(self._map, data_at)[0]
                out.append((first * self.page_size + _HDR, size))
            return out
        except (_Moved, struct.error, ValueError, TypeError):
            return [None] * len(keys)

    def cached(self, ranges: Sequence[tuple[int, int]]) -> list[bool]:
        """Per (offset, length) range of the data file: whether every page of it is in the page cache (mincore on
        this map: it reads nothing, where a probing read would start the disk read it asks about)."""
        m, base = self._map, self._base
        if m is None:
            return [False] * len(ranges)
        if _lmdbwalk is not None and WALK_IN_C:
            return [bool(b) for b in _lmdbwalk.resident(m, ranges)]
        out = []
        for off, n in ranges:
            start = off - off % mmap.PAGESIZE
            pages = (off + n - start + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            ok = n > 0 and off + n <= len(m) and \
                _LIBC.mincore(ctypes.c_void_p(base + start), ctypes.c_size_t(off + n - start), vec) == 0
            out.append(ok and all(v & 1 for v in vec))
        return out

    def ranges(self, place: tuple[int, int], spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """File (offset, length) ranges that `read(place, spans)` reads: the first overflow page's header and the
        (start, length) spans of the value, merged where they share or join pages."""
        off = place[0]
        out = [(off - _HDR, _HDR)]
        for start, length in sorted(spans):
            a, b = off + start, off + start + length
            last_a, last_len = out[-1]
            if a // self.page_size <= (last_a + last_len - 1) // self.page_size + 1:
                out[-1] = (last_a, max(last_a + last_len, b) - last_a)
            else:
                out.append((a, b - a))
        return out

    def read(self, place: tuple[int, int], spans: Sequence[tuple[int, int]], bufs: Sequence) -> bool:
        """Read the (start, length) spans of the value at `place` into the writable buffers `bufs` (one per span,
        `length` bytes each) straight from the data file, after checking the header of the value's first overflow
        page: its page number, its type and its page count must be the ones `place` implies. False (the buffers
        then hold nothing to trust) on any mismatch or short read. Only while the read transaction that gave
        `place` is open: LMDB keeps that snapshot's pages unchanged while a reader holds it."""
        off, size = place
        first = off - _HDR
        if any(start < 0 or start + length > size for start, length in spans):
            return False
        head = bytearray(_OVERFLOW.size)
        todo = list(zip(spans, bufs))
        if todo and todo[0][0][0] == 0:  # the header and the first span in one read
            (_, length), buf = todo.pop(0)
            if os.preadv(self._fd, [head, buf], first) != _HDR + length:
                return False
        elif os.preadv(self._fd, [head], first) != _HDR:
            return False
        pgno, _, flags, pages = _OVERFLOW.unpack(head)
        if pgno * self.page_size != first or not flags & _P_OVERFLOW \
                or pages != -(-(size + _HDR) // self.page_size):
            return False
        return all(os.preadv(self._fd, [buf], off + start) == length for (start, length), buf in todo)

    def read_many(self, places: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], out: np.ndarray
                  ) -> list[bool]:
        """`read` of each place's spans into row i of `out` (C-contiguous, len(places) rows of sum(lengths) bytes
        each); per place whether it succeeded. In C (`_lmdbwalk.read_spans`) where it was built."""
        if not places:
            return []
        if _lmdbwalk is not None and WALK_IN_C:
            return [bool(b) for b in _lmdbwalk.read_spans(self._fd, self.page_size, places, spans, out)]
        rows = out.reshape(len(places), -1).view(np.uint8)
        ends = np.cumsum([0] + [length for _, length in spans])
        return [self.read(place, spans, [memoryview(rows[i, ends[j]:ends[j + 1]]) for j in range(len(spans))])
                for i, place in enumerate(places)]

    def advise(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Ask the kernel to read these (offset, length) ranges of the data file now."""
        for off, n in ranges:
            os.posix_fadvise(self._fd, off, n, os.POSIX_FADV_WILLNEED)

"""LmdbTable.get_latents: the selected layers of the stored float32 keys, read ahead at once from their places in
the data file, or one after another / by reader threads when the values are not cached (a real LMDB in a temp
dir)."""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest

from facekeys.errors import InvalidArgument
from facekeys.records import NewKey, Where
from facekeys.store import lmdb_pages, lmdb_table
from facekeys.store.lmdb_table import LmdbTable

N = 300
MAP = 64 << 20


@pytest.fixture
def stored(tmp_path):
    """(path, latents (N, 18, 512), key ids) of a closed table holding N random keys."""
    x = np.random.default_rng(0).standard_normal((N, 18, 512)).astype(np.float32)
    t = LmdbTable(tmp_path / "db", MAP, durable=False)
    metas = t.put([NewKey(v, "enc", where=Where("cam")) for v in x], [f"id{i}" for i in range(N)])
    t.close()
    return tmp_path / "db", x, [m.key_id for m in metas]


def check(got, x, ids, wanted, layers):
    assert sorted(got) == sorted(wanted)
    for key_id in wanted:
        np.testing.assert_array_equal(got[key_id], x[ids.index(key_id)][list(layers)])
        assert got[key_id].dtype == np.float32 and got[key_id].flags.c_contiguous


def evict(path):
    """Drop the closed table's files from the page cache; False where the file system keeps them (tmpfs)."""
    for f in path.glob("*.mdb"):
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    data = lmdb_pages.ValueLocator(path / "data.mdb", 4096)  # maps the file, reads nothing
    kept = data.cached([(0, (path / "data.mdb").stat().st_size)])[0]
    data.close()
    return not kept


@pytest.mark.parametrize("threads,prefetch", [(1, False), (lmdb_table.READ_THREADS, False), (1, True)])
def test_selected_layers_of_every_present_key(stored, threads, prefetch):
    path, x, ids = stored
    t = LmdbTable(path, MAP, read_threads=threads, prefetch=prefetch)
    wanted = ids[::7]
    got = t.get_latents(wanted + [10**9], (0, 1, 2, 3))  # an absent key is left out
    check(got, x, ids, wanted, (0, 1, 2, 3))
    check(t.get_latents(ids[5:9], (17, 3)), x, ids, ids[5:9], (17, 3))
    assert t.get_latents([], (0,)) == {}
    t.close()


def test_reader_threads_once_the_first_value_came_from_disk(stored, monkeypatch):
    """A major fault on the first key sends the rest to the reader threads; their answer is the same."""
    path, x, ids = stored
    faults = iter(range(10**6))
    monkeypatch.setattr(lmdb_table, "_major_faults", lambda: next(faults))  # every read "faulted"
    t = LmdbTable(path, MAP, prefetch=False)
    wanted = ids[3:200:3]
    check(t.get_latents(wanted, range(18)), x, ids, wanted, range(18))
    assert t._readers is not None  # the threaded path ran
    t.close()
    monkeypatch.setattr(lmdb_table, "_major_faults", lambda: 0)  # cached: no faults, no threads
    t = LmdbTable(path, MAP, prefetch=False)
    check(t.get_latents(wanted, (1,)), x, ids, wanted, (1,))
    assert t._readers is None
    t.close()


def test_uncached_values_are_detected(stored):
    """Evicted from the page cache, the first read is a major fault and the threads take over (skipped where
    the file system keeps its pages, e.g. tmpfs)."""
    path, x, ids = stored
    if not hasattr(resource, "RUSAGE_THREAD") or not lmdb_pages.SUPPORTED:
        pytest.skip("needs Linux getrusage(RUSAGE_THREAD), posix_fadvise and mincore")
    if not evict(path):
        pytest.skip("the file system kept the evicted pages")
    t = LmdbTable(path, MAP, prefetch=False)
    before = lmdb_table._major_faults()
    wanted = ids[1::2]
    got = t.get_latents(wanted, (0, 1))
    assert lmdb_table._major_faults() > before
    check(got, x, ids, wanted, (0, 1))
    assert t._readers is not None and t.latents_advised == 0
    t.close()


def test_uncached_values_are_read_ahead_at_once(stored):
    """prefetch: every uncached value is asked of the kernel before the reads, and only those (only the pages of
    the layers asked for are read); the values are the stored ones and the reader threads stay idle."""
    path, x, ids = stored
    if not lmdb_pages.SUPPORTED:
        pytest.skip("needs posix_fadvise and mincore")
    if not evict(path):
        pytest.skip("the file system kept the evicted pages")
    t = LmdbTable(path, MAP)
    wanted = ids[1::2]
    check(t.get_latents(wanted + [10**9], (0, 1)), x, ids, wanted, (0, 1))
    assert t.latents_advised == len(wanted)  # the absent key has no place
    mixed = ids[3:40]  # half of them read above (layers 0-1: the values' first pages), so cached now
    check(t.get_latents(mixed, (0, 1)), x, ids, mixed, (0, 1))
    assert t.latents_advised == len(wanted) + len(ids[4:40:2])
    check(t.get_latents(mixed[:30], (1,)), x, ids, mixed[:30], (1,))  # all cached: nothing asked for
    assert t.latents_advised == len(wanted) + len(ids[4:40:2])
    check(t.get_latents(mixed[:30], range(18)), x, ids, mixed[:30], range(18))  # the other layers' pages
    assert t.latents_advised == len(wanted) + len(ids[4:40:2]) + 30
    assert t._readers is None and t.latents_misplaced == 0
    t.close()


@pytest.mark.parametrize("layers", [(0, 1, 2, 3), (17, 3), (5,), tuple(range(18)), (3, 3, 17, 0, 1)])
def test_placed_reads_take_the_selected_layers_from_the_file(stored, layers, lmdb_walk):
    """The placed path reads an unencrypted latent's selected layers straight from the data file: any order,
    repeats, gaps."""
    path, x, ids = stored
    t = LmdbTable(path, MAP)
    for wanted in (ids[::3], ids[1:2]):
        check(t.get_latents(wanted + [10**9], layers), x, ids, wanted, layers)
    assert t.latents_misplaced == 0 and t._readers is None
    t.close()


def test_a_place_whose_page_header_disagrees_is_read_through_lmdb(stored, monkeypatch, lmdb_walk):
    """A place one page off (as a wrong or stale one would be) fails the header check: the value is read through
    py-lmdb instead, and the answer is the same."""
    path, x, ids = stored
    t = LmdbTable(path, MAP)
    locate = t._locator.locate
    monkeypatch.setattr(t._locator, "locate", lambda *a: [None if w is None else (w[0] + 4096, w[1])
                                                           for w in locate(*a)])
    wanted = ids[10:60]
    check(t.get_latents(wanted, (2, 3, 4)), x, ids, wanted, (2, 3, 4))
    assert t.latents_misplaced == len(wanted)
    t.close()


def test_bad_reader_threads(tmp_path):
    with pytest.raises(InvalidArgument, match="read_threads"):
        LmdbTable(tmp_path / "db", MAP, read_threads=0)

"""lmdb_pages.ValueLocator: the places of LMDB values in the data file, read from the B-tree pages (by the C walk
and by the Python one), against what py-lmdb returns for the same keys (a real LMDB in a temp dir)."""

from __future__ import annotations

import os

import lmdb
import numpy as np
import pytest

from facekeys.store.lmdb_pages import ValueLocator

# every test runs with the C walk (where built) and with the Python one, and is skipped where lmdb_pages is not
# supported (the fixture in tests/store/conftest.py)
pytestmark = pytest.mark.usefixtures("lmdb_walk")


NODEMAX = 2038  # LMDB 0.9, 4 KB pages: a leaf node (8 B + key + value) larger than this puts the value on overflow pages


def random_items(rng, n, max_key):
    """{key: value}: keys of 1..max_key random bytes (memcmp order differs from length order), values from 1 byte
    (inline in the leaf) to 20 KB (five overflow pages)."""
    out = {}
    while len(out) < n:
        k = rng.bytes(int(rng.integers(1, max_key + 1)))
        out[k] = rng.bytes(int(rng.choice([1, 100, 1500, 2100, 4000, 9000, 20000])))
    return out


def check_places(env, db, locator, items, extra_keys=()):
    """Every value on overflow pages is found where its bytes are; inline values and absent keys give None."""
    keys = list(items) + list(extra_keys)
    fd = os.open(os.path.join(env.path(), "data.mdb"), os.O_RDONLY)
    try:
        with env.begin(buffers=True) as txn:
            places = locator.locate(txn.id(), b"vals", keys)
            for key, place in zip(keys, places):
                value = txn.get(key, db=db)
                if value is None or 8 + len(key) + len(value) <= NODEMAX:
                    assert place is None, key
                else:
                    assert place is not None and place[1] == len(value), key
                    assert os.pread(fd, place[1], place[0]) == bytes(value)
    finally:
        os.close(fd)
    return places


@pytest.mark.parametrize("max_key", [8, 500])  # 500-byte keys: a few per page, so the tree is 4-5 levels deep
def test_places_match_the_stored_values_across_writes_deletes_and_overwrites(tmp_path, max_key):
    rng = np.random.default_rng(max_key)
    env = lmdb.open(str(tmp_path / "env"), map_size=1 << 30, max_dbs=4, readahead=False)
    env.open_db(b"other")
    db = env.open_db(b"vals")
    items = random_items(rng, 1500, max_key)
    keys = list(items)
    for start in range(0, len(keys), 300):  # several transactions
        with env.begin(write=True, db=db) as txn:
            for k in keys[start:start + 300]:
                txn.put(k, items[k])
    with env.begin(write=True, db=db) as txn:
        for k in keys[::5]:  # deleted: their pages are freed and reused by the overwrites below
            txn.delete(k)
            del items[k]
        for k in keys[1::7]:
            items[k] = rng.bytes(int(rng.choice([50, 5000, 12000])))
            txn.put(k, items[k])
    locator = ValueLocator(tmp_path / "env" / "data.mdb", env.stat()["psize"])
    with env.begin(db=db) as txn:
        assert txn.stat(db)["depth"] >= (2 if max_key == 8 else 4)
    places = check_places(env, db, locator, items, extra_keys=keys[::5] + [b"\x00", b"\xff" * 400])
    assert sum(p is not None for p in places) > len(items) // 2
    # the file grows past the locator's map: new keys are still placed
    more = random_items(rng, 400, max_key)
    with env.begin(write=True, db=db) as txn:
        for k, v in more.items():
            txn.put(k, v)
    items.update(more)
    check_places(env, db, locator, items)
    locator.close()
    env.close()


def test_a_snapshot_that_moved_on_or_a_foreign_file_gives_no_places(tmp_path):
    env = lmdb.open(str(tmp_path / "env"), map_size=1 << 28, max_dbs=2)
    db = env.open_db(b"vals")
    with env.begin(write=True, db=db) as txn:
        txn.put(b"k", b"x" * 9000)
    locator = ValueLocator(tmp_path / "env" / "data.mdb", env.stat()["psize"])
    old = env.begin(buffers=True)
    assert locator.locate(old.id(), b"vals", [b"k"])[0] is not None
    assert locator.locate(old.id(), b"absent-db", [b"k"]) == [None]
    assert locator.locate(old.id() + 7, b"vals", [b"k"]) == [None]  # no meta page holds that snapshot
    for _ in range(2):  # both meta pages rewritten since `old` began
        with env.begin(write=True, db=db) as txn:
            txn.put(b"k", b"y" * 9000)
    assert locator.locate(old.id(), b"vals", [b"k", b"j"]) == [None, None]
    assert bytes(old.get(b"k", db=db)) == b"x" * 9000  # the old reader is unaffected
    old.abort()
    locator.close()
    env.close()
    junk = tmp_path / "junk.mdb"
    junk.write_bytes(np.random.default_rng(0).bytes(5 * 4096))
    foreign = ValueLocator(junk, 4096)
    assert foreign.locate(1, b"vals", [b"k"]) == [None]
    foreign.close()


def test_cached_tells_page_cache_residency_without_reading(tmp_path):
    """mincore: evicted pages are not cached and stay so after asking; after a read they are."""
    path = tmp_path / "env"
    env = lmdb.open(str(path), map_size=1 << 28, max_dbs=2)
    db = env.open_db(b"vals")
    with env.begin(write=True, db=db) as txn:
        # fillers keep the value asked about beyond the 64 KB around the B-tree pages (allocated first and at
        # the commit) that the kernel maps with each page fault: mapped pages cannot be evicted
        txn.put(b"a", os.urandom(200_000))
        txn.put(b"k", os.urandom(40_000))
        txn.put(b"z", os.urandom(200_000))
    env.sync(True)
    locator = ValueLocator(path / "data.mdb", env.stat()["psize"])
    with env.begin(buffers=True) as txn:
        place = locator.locate(txn.id(), b"vals", [b"k"])[0]
    assert place[0] > 128 << 10 and locator.cached([place])[0]  # just written
    fd = os.open(path / "data.mdb", os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if locator.cached([place])[0]:
        os.close(fd)
        pytest.skip("the file system kept the evicted pages")
    assert not locator.cached([place])[0]  # asking read nothing
    os.pread(fd, place[1], place[0])
    assert locator.cached([place])[0]
    assert not locator.cached([(place[0], 1 << 40)])[0]  # past the end of the file
    os.close(fd)
    locator.close()
    env.close()


def test_ranges_cover_the_header_and_the_spans_merging_shared_or_joining_pages(tmp_path):
    data = tmp_path / "data.mdb"
    data.write_bytes(bytes(4096 * 4))
    locator = ValueLocator(data, 4096)
    place = (5 * 4096 + 16, 36864)  # a latent on pages 5-14
    assert locator.ranges(place, [(0, 8192)]) == [(5 * 4096, 8208)]  # header + layers 0-3: pages 5-7
    assert locator.ranges(place, [(34816, 2048)]) == [(5 * 4096, 16), (place[0] + 34816, 2048)]  # layer 17
    assert locator.ranges(place, [(6144, 2048), (0, 2048)]) == [(5 * 4096, 8208)]  # layers 3 and 0 join
    assert locator.ranges(place, [(0, 2048), (10240, 2048)]) == [(5 * 4096, 2064), (place[0] + 10240, 2048)]
    locator.close()

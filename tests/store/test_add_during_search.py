"""Adds never wait for running searches (issue: enrolment starved under Match load): rows are published past
what a running search reads; only a removal, which moves or zeroes rows, waits for the searches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from facekeys.layers import parse_layers
from facekeys.store import Filter, StoreConfig
from facekeys.store.ann import AnnLayerIndex
from facekeys.store.vectors import FlatLayerIndex

from fkhelpers import attrs, random_keys


def _flat():
    return FlatLayerIndex()


def _ann():
    return AnnLayerIndex(StoreConfig(index_mode="ann"), None, background=False)


@pytest.mark.parametrize("make", [_flat, _ann], ids=["flat", "ann-buffer"])
def test_add_completes_while_a_search_holds_the_index_and_remove_waits(make):
    ix = make()
    x = random_keys(3000, seed=1)
    ix.add(np.arange(1000), x[:1000], attrs(1000))
    with ix._lock.read():  # a search in progress, as long as this block runs
        done = threading.Event()
        t = threading.Thread(target=lambda: (ix.add(np.arange(1000, 3000), x[1000:], attrs(2000, 2)), done.set()))
        t.start()
        assert done.wait(30), "add waited for a running search"  # 2,000 keys, past the capacity: arrays grow
        removed = threading.Event()
        r = threading.Thread(target=lambda: (ix.remove(np.array([5])), removed.set()))
        r.start()
        assert not removed.wait(0.5), "remove compacted rows under a running search"
    assert removed.wait(30)
    t.join()
    r.join()
    assert len(ix) == 2999
    layers = parse_layers("high:4")
    found = ix.search(x[[2500, 7]], layers, "l2", 1, Filter())
    assert found.ids[:, 0].tolist() == [2500, 7]  # the added rows are searchable; removed id 5 is not in the way

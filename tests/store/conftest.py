"""Fixtures shared by the store tests."""

from __future__ import annotations

import pytest

from facekeys.store import lmdb_pages


@pytest.fixture(params=["c", "python"])
def lmdb_walk(request, monkeypatch):
    """lmdb_pages with its C helpers (`_lmdbwalk`, where built) and with the Python ones: the B-tree walk, the
    residency check and the checked span reads."""
    if not lmdb_pages.SUPPORTED:
        pytest.skip("needs a 64-bit little-endian build, posix_fadvise and mincore")
    if request.param == "c" and lmdb_pages._lmdbwalk is None:
        pytest.skip("_lmdbwalk was not built")
    monkeypatch.setattr(lmdb_pages, "WALK_IN_C", request.param == "c")
    return request.param

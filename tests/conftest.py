"""Shared fixtures: real engines in temp dirs, real gRPC servers on loopback ports."""

from __future__ import annotations

import pytest


@pytest.fixture
def store_factory(tmp_path):
    """Open KeyStores in temp dirs; all closed at teardown."""
    from facekeys.store import KeyStore, StoreConfig

    opened = []

    def make(name="store", **cfg):
        cfg.setdefault("map_size", 1 << 30)
        cfg.setdefault("durable", False)
        s = KeyStore.open(tmp_path / name, StoreConfig(**cfg))
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def server_factory(tmp_path):
    """Start real KeyStoreServers on 127.0.0.1:0; stopped at teardown."""
    from facekeys.server import KeyStoreServer, ServerConfig
    from facekeys.store import StoreConfig

    started = []

    def make(name="srv", store=None, **cfg):
        store_cfg = StoreConfig(**{"map_size": 1 << 30, **(store or {})})
        cfg.setdefault("metrics_port", 0)
        srv = KeyStoreServer(ServerConfig(data_dir=tmp_path / name, port=0, store=store_cfg, **cfg)).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop(grace=0)

"""Shared fixtures: real engines in temp dirs, real gRPC servers on loopback ports."""

from __future__ import annotations

import pytest


def _stores(base):
    """A maker of KeyStores in temp dirs under `base` (1 GiB map, not durable unless asked), and the list it
    opened."""
    from facekeys.store import KeyStore, StoreConfig

    opened = []

    def make(name="store", **cfg):
        cfg.setdefault("map_size", 1 << 30)
        cfg.setdefault("durable", False)
        s = KeyStore.open(base / name, StoreConfig(**cfg))
        opened.append(s)
        return s

    return make, opened


@pytest.fixture
def store_factory(tmp_path):
    """Open KeyStores in temp dirs; all closed at teardown."""
    make, opened = _stores(tmp_path)
    yield make
    for s in opened:
        s.close()


@pytest.fixture(scope="module")
def module_store_factory(tmp_path_factory):
    """As store_factory, for stores shared by a module's tests (ones that only read what the fixture stored):
    closed after the module's last test."""
    make, opened = _stores(tmp_path_factory.mktemp("stores"))
    yield make
    for s in opened:
        s.close()


def _servers(base):
    """A maker of real KeyStoreServers on 127.0.0.1:0 with data dirs under `base`, and the list it started."""
    from facekeys.server import KeyStoreServer, ServerConfig
    from facekeys.store import StoreConfig

    started = []

    def make(name="srv", store=None, **cfg):
        store_cfg = StoreConfig(**{"map_size": 1 << 30, **(store or {})})
        cfg.setdefault("metrics_port", 0)
        srv = KeyStoreServer(ServerConfig(data_dir=base / name, port=0, store=store_cfg, **cfg)).start()
        started.append(srv)
        return srv

    return make, started


@pytest.fixture
def server_factory(tmp_path):
    """Start real KeyStoreServers on 127.0.0.1:0; stopped at teardown."""
    make, started = _servers(tmp_path)
    yield make
    for srv in started:
        srv.stop(grace=0)


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory):
    """As server_factory, for servers shared by a module's tests (ones that only read what the fixture stored):
    stopped after the module's last test."""
    make, started = _servers(tmp_path_factory.mktemp("servers"))
    yield make
    for srv in started:
        srv.stop(grace=0)

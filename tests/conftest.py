"""Shared fixtures: real engines in temp dirs, real gRPC servers on loopback ports; and CI's rule on skips."""

from __future__ import annotations

import os

import pytest


# -- Under CI=true a skip is a failure: a missing tool, package or fixture must not pass silently. Only tests
# marked `gpu` may skip there (the reason shows in the -ra summary).
def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _skip_fails_in_ci(report, gpu: bool) -> None:
    if _ci() and report.skipped and not gpu and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every non-GPU test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _skip_fails_in_ci(outcome.get_result(), item.get_closest_marker("gpu") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _skip_fails_in_ci(outcome.get_result(), False)  # a module skipped whole (e.g. importorskip at its top)


def _open_store(base, name="store", **cfg):
    """A KeyStore in base / name (1 GiB map, not durable unless asked)."""
    from facekeys.store import KeyStore, StoreConfig

    cfg.setdefault("map_size", 1 << 30)
    cfg.setdefault("durable", False)
    return KeyStore.open(base / name, StoreConfig(**cfg))


def _start_server(base, name="srv", store=None, **cfg):
    """A real KeyStoreServer on 127.0.0.1:0 with its data in base / name."""
    from facekeys.server import KeyStoreServer, ServerConfig
    from facekeys.store import StoreConfig

    store_cfg = StoreConfig(**{"map_size": 1 << 30, **(store or {})})
    cfg.setdefault("metrics_port", 0)
    return KeyStoreServer(ServerConfig(data_dir=base / name, port=0, store=store_cfg, **cfg)).start()


def _factory(base, make_one, end_one):
    """Yields a maker (make_one(base, ...)); once resumed, ends everything it made with end_one."""
    made = []

    def make(*args, **kwargs):
        made.append(make_one(base, *args, **kwargs))
        return made[-1]

    yield make
    for thing in made:
        end_one(thing)


@pytest.fixture
def store_factory(tmp_path):
    """Open KeyStores in temp dirs; all closed at teardown."""
    yield from _factory(tmp_path, _open_store, lambda s: s.close())


@pytest.fixture(scope="module")
def module_store_factory(tmp_path_factory):
    """As store_factory, for stores shared by a module's tests (ones that only read what the fixture stored):
    closed after the module's last test."""
    yield from _factory(tmp_path_factory.mktemp("stores"), _open_store, lambda s: s.close())


@pytest.fixture
def server_factory(tmp_path):
    """Start real KeyStoreServers on 127.0.0.1:0; stopped at teardown."""
    yield from _factory(tmp_path, _start_server, lambda srv: srv.stop(grace=0))


@pytest.fixture(scope="module")
def module_server_factory(tmp_path_factory):
    """As server_factory, for servers shared by a module's tests (ones that only read what the fixture stored):
    stopped after the module's last test."""
    yield from _factory(tmp_path_factory.mktemp("servers"), _start_server, lambda srv: srv.stop(grace=0))

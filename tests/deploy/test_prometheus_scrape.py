"""A real Prometheus server (the Debian package's /usr/bin/prometheus) on loopback scrapes a running
key store, loads deploy/prometheus/rules.yml, and answers the dashboard's queries.

Everything binds 127.0.0.1 on free ports, waits are bounded, and the fixtures stop what they start.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from deploytools import DEPLOY, free_port, require_tool

SCRAPE_S = 1
DEADLINE_S = 90


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}" + (("?" + urllib.parse.urlencode(params)) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def wait_for(what: str, fn, deadline_s: float = DEADLINE_S):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except (OSError, ValueError, KeyError) as e:  # not up yet
            last = e
        time.sleep(0.5)
    pytest.fail(f"timed out after {deadline_s}s waiting for {what}; last: {last!r}")


@pytest.fixture
def keystore(tmp_path):
    from facekeys.server import KeyStoreServer, ServerConfig
    from facekeys.store import StoreConfig

    srv = KeyStoreServer(ServerConfig(data_dir=tmp_path / "ks", host="127.0.0.1", port=0, metrics_port=0,
                                      workers=4, store=StoreConfig(map_size=1 << 30, durable=False))).start()
    yield srv
    srv.stop(grace=0)


@contextlib.contextmanager
def running_prometheus(tmp_path, job: dict):
    """A Prometheus server scraping one job (a scrape_configs entry) every SCRAPE_S, with the deployed rules;
    yields its base URL."""
    binary = require_tool("prometheus")
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    rules = (DEPLOY / "prometheus" / "rules.yml").read_text()
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s", "scrape_timeout": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [job],
    }))
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("Prometheus ready", lambda: proc.poll() is None and urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200
                 or (proc.poll() is not None and pytest.fail((tmp_path / "prometheus.log").read_text())))
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture
def prometheus(tmp_path, keystore):
    with running_prometheus(tmp_path, {"job_name": "facekeys-keystore",
                                       "static_configs": [{"targets": [f"127.0.0.1:{keystore.metrics_port}"]}]}) as base:
        yield base


def target_up(prometheus):
    (t,) = api(prometheus, "/api/v1/targets")["activeTargets"]
    return t if t["health"] == "up" else None


def test_prometheus_scrapes_the_key_store(keystore, prometheus):
    from facekeys.client import Client
    from facekeys.records import NewKey

    from fkhelpers import random_keys

    lat = random_keys(7, seed=3)
    with Client(keystore.address) as c:
        c.enroll([NewKey(l, "enc", identity_id=f"p{i % 3}") for i, l in enumerate(lat)])
        r = c.match(lat[:2], "enc", layers="high:4", metric="cosine", top_k=1)
        assert all(p.accepted for p in r.results)
        c.stats()

    t = wait_for("target up", lambda: target_up(prometheus))
    assert t["labels"]["job"] == "facekeys-keystore"
    assert t["scrapeUrl"] == f"http://127.0.0.1:{keystore.metrics_port}/metrics"

    up = api(prometheus, "/api/v1/query", query='up{job="facekeys-keystore"}')["result"]
    assert [s["value"][1] for s in up] == ["1"]

    def value(q):
        res = api(prometheus, "/api/v1/query", query=q)["result"]
        return float(res[0]["value"][1]) if res else None

    assert wait_for("keys stored = 7", lambda: value("facekeys_keys_stored") == 7)
    assert value("facekeys_identities_stored") == 3
    assert value("facekeys_index_bytes") == keystore.store.stats().index_bytes >= 7 * 18 * 512 * 4
    assert 0 < value("facekeys_lmdb_used_bytes") < value("facekeys_lmdb_map_bytes") == 1 << 30
    assert value("facekeys_enrolled_keys_total") == 7
    assert value('facekeys_match_decisions_total{decision="accepted"}') == 2
    assert value('sum(facekeys_requests_total{method="Match", code="OK"})') == 1
    assert value('sum(facekeys_request_duration_seconds_count{method="Enroll"})') == 1


def test_rules_load_and_dashboard_queries_run(keystore, prometheus):
    """The alert rules evaluate without error against live data, and every dashboard query runs."""
    from test_deploy_lint import dashboard_exprs

    wait_for("first scrape", lambda: api(prometheus, "/api/v1/query", query="facekeys_keys_stored")["result"])

    def rules_evaluated():
        groups = api(prometheus, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("20") and
                                      not r["lastEvaluation"].startswith("0001") for r in rules) else None

    rules = wait_for("rules evaluated", rules_evaluated)
    names = {r["name"] for r in rules}
    assert {"FacekeysKeyStoreDown", "FacekeysMatchLatencyHigh", "FacekeysLmdbMapNearlyFull",
            "FacekeysIndexSnapshotStale", "FacekeysAuditWriteFailures", "FacekeysHighServerErrorRate"} <= names
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    # A healthy, empty-ish store fires nothing.
    firing = [a for a in api(prometheus, "/api/v1/alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, firing
    for title, expr in dashboard_exprs():
        api(prometheus, "/api/v1/query", query=expr)  # raises on a query error
    # The headline panels have data from this key store.
    for title, expr in dashboard_exprs():
        if title in ("Keys stored", "Index memory", "LMDB map used", "Targets up"):
            assert api(prometheus, "/api/v1/query", query=expr)["result"], title


def test_prometheus_scrapes_a_tls_key_store_over_https(tmp_path):
    """A key store with TLS serves its metrics over HTTPS with the same certificate (deploy/prometheus's
    scrape jobs: scheme https, the deployment CA); a plain-HTTP scrape of it fails."""
    from fkhelpers import make_tls

    from facekeys.security.config import SecurityConfig
    from facekeys.server import KeyStoreServer, ServerConfig
    from facekeys.store import StoreConfig

    tls = make_tls(tmp_path / "tls")
    srv = KeyStoreServer(ServerConfig(
        data_dir=tmp_path / "ks", host="127.0.0.1", port=0, metrics_port=0, store=StoreConfig(map_size=1 << 28),
        security=SecurityConfig(tls_cert=tls["server_cert"], tls_key=tls["server_key"]))).start()
    target = {"targets": [f"127.0.0.1:{srv.metrics_port}"]}
    try:
        with running_prometheus(tmp_path / "https", {"job_name": "facekeys-keystore", "scheme": "https",
                                                     "tls_config": {"ca_file": str(tls["ca"])},
                                                     "static_configs": [target]}) as base:
            t = wait_for("target up over https", lambda: target_up(base))
            assert t["scrapeUrl"] == f"https://127.0.0.1:{srv.metrics_port}/metrics"
            assert wait_for("a series", lambda: api(base, "/api/v1/query", query="facekeys_keys_stored")["result"])
        with running_prometheus(tmp_path / "http", {"job_name": "facekeys-keystore",
                                                    "static_configs": [target]}) as base:
            def target_down():
                (t,) = api(base, "/api/v1/targets")["activeTargets"]
                return t if t["health"] == "down" else None

            assert wait_for("plain-HTTP scrape fails", target_down)["lastError"]
    finally:
        srv.stop(grace=0)

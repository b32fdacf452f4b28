"""Static checks of everything under deploy/, with the real tools run as subprocesses:
promtool (rules, config, rule unit tests, dashboard queries), hadolint (Dockerfiles),
kubernetes-validate (Kubernetes manifests against the OpenAPI schemas), dclint (compose file);
plus cross-reference checks that no schema catches (ports, selectors, labels, mounted paths)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploytools import DEPLOY, ROOT, SECRETS_MOUNT, find_tool, load_yaml_docs, localize, require_tool

PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))

SERVER_METRICS = {
    "facekeys_requests_total", "facekeys_request_duration_seconds_bucket", "facekeys_match_decisions_total",
    "facekeys_enrolled_keys_total", "facekeys_keys_stored", "facekeys_identities_stored", "facekeys_index_bytes",
    "facekeys_lmdb_used_bytes", "facekeys_lmdb_map_bytes", "facekeys_audit_ok", "facekeys_audit_write_failures_total",
}
COMING_METRICS = {"facekeys_index_snapshot_age_seconds", "facekeys_audit_write_failures_total"}


def run(cmd, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def ok(r: subprocess.CompletedProcess) -> bool:
    return r.returncode == 0


def show(r) -> str:
    return f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


# -- Prometheus ---------------------------------------------------------------------------------------
def test_promtool_check_rules():
    r = run([require_tool("promtool"), "check", "rules", PROM / "rules.yml"])
    assert ok(r), show(r)
    assert "SUCCESS" in r.stdout


def test_promtool_check_config():
    r = run([require_tool("promtool"), "check", "config", PROM / "prometheus.yml"])
    assert ok(r), show(r)


def test_promtool_alert_unit_tests():
    r = run([require_tool("promtool"), "test", "rules", "rules.test.yml"], cwd=PROM)
    assert ok(r), show(r)


def test_promtool_rejects_a_broken_rule(tmp_path):
    """The checks above can fail: a rule with a PromQL syntax error is refused."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: rate(facekeys_requests_total[5m]\n")
    r = run([require_tool("promtool"), "check", "rules", bad])
    assert r.returncode != 0


def _alerts() -> dict[str, dict]:
    (doc,) = load_yaml_docs(PROM / "rules.yml")
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def _records() -> dict[str, str]:
    (doc,) = load_yaml_docs(PROM / "rules.yml")
    return {r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def _expand(expr: str) -> str:
    recs = _records()
    for name, e in recs.items():
        expr = expr.replace(name, f"({e})")
    return expr


@pytest.mark.parametrize("what, metric", [
    ("error rate", "facekeys_requests_total"),
    ("Match latency p99", 'facekeys_request_duration_seconds_bucket{method="Match"}'),
    ("LMDB map usage", "facekeys_lmdb_used_bytes / facekeys_lmdb_map_bytes"),
    ("index snapshot age", "facekeys_index_snapshot_age_seconds"),
    ("audit write failures", "facekeys_audit_write_failures_total"),
])
def test_every_required_alert_exists(what, metric):
    hits = [name for name, r in _alerts().items() if metric in _expand(r["expr"])]
    assert hits, f"no alert on {what} ({metric})"
    for name in hits:
        a = _alerts()[name]
        assert a["labels"]["severity"] in ("warning", "critical")
        assert a["annotations"]["summary"] and a["annotations"]["description"]
        assert f"`{name}`" in (DEPLOY / "README.md").read_text(), f"{name} is not explained in deploy/README.md"


def test_rules_use_only_known_metrics():
    names = set()
    for r in list(_alerts().values()):
        names |= set(re.findall(r"\bfacekeys_[a-z_]+\b", _expand(r["expr"])))
    assert names <= SERVER_METRICS | COMING_METRICS, names - SERVER_METRICS - COMING_METRICS


# -- Grafana --------------------------------------------------------------------------------------------
def _dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "facekeys.json").read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables replaced by what they expand to)."""
    out = []
    for p in _dashboard()["panels"]:
        for t in p.get("targets", []):
            e = t["expr"].replace("$__rate_interval", "1m").replace("$job", ".*").replace("$instance", ".*")
            out.append((p["title"], e))
    return out


def test_dashboard_queries_parse_with_promtool(tmp_path):
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]}]}
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(json.dumps(rules))  # JSON is YAML
    r = run([require_tool("promtool"), "check", "rules", f])
    assert ok(r), show(r)


def test_dashboard_structure_and_metrics():
    d = _dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert len({d["uid"]}) == 1 and d["uid"]
    (ds,) = load_yaml_docs(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    uid = ds["datasources"][0]["uid"]
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == uid, p["title"]
    text = json.dumps(d)
    used = set(re.findall(r"\bfacekeys_[a-z_]+\b", text))
    assert used <= SERVER_METRICS | COMING_METRICS, used - SERVER_METRICS - COMING_METRICS
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for want in ("request rate", "latency", "keys stored", "index memory", "decisions"):
        assert want in titles, want
    assert "sum by (decision) (rate(facekeys_match_decisions_total" in text  # accepted vs refused


def test_grafana_provisioning_matches_compose():
    compose = load_yaml_docs(DEPLOY / "compose.yaml")[0]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    (prov,) = load_yaml_docs(GRAFANA / "provisioning" / "dashboards" / "facekeys.yml")
    path = prov["providers"][0]["options"]["path"]
    assert mounts.get(path) == "./grafana/dashboards"
    assert mounts.get("/etc/grafana/provisioning") == "./grafana/provisioning"
    (ds,) = load_yaml_docs(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert ds["datasources"][0]["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/facekeys.json"


# -- Dockerfiles -----------------------------------------------------------------------------------------
def test_the_six_images_exist():
    assert {p.name for p in DOCKERFILES} == {
        "keystore.Dockerfile", "keystore-cuda.Dockerfile", "recovery-cpu.Dockerfile", "recovery-cuda.Dockerfile",
        "indexer-cpu.Dockerfile", "indexer-cuda.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    r = run([require_tool("hadolint"), "--no-color", dockerfile])
    assert ok(r), show(r)


def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    assert run([require_tool("hadolint"), "--no-color", bad]).returncode != 0


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ins = _instructions(dockerfile)
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copy_sources_exist(dockerfile):
    """Every COPY source (outside --from) exists in the build context (the repository root)."""
    for word, rest in _instructions(dockerfile):
        if word != "COPY" or "--from=" in rest:
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        for src in args[:-1]:
            matches = list(ROOT.glob(src))
            if src.endswith("*"):
                continue  # optional (README*)
            assert matches, f"{dockerfile.name}: COPY source {src} does not exist"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runtime_policy(dockerfile):
    final = _final_stage(dockerfile)
    words = [w for w, _ in final]
    users = [r for w, r in final if w == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), "final stage must run as a numeric non-root user"
    assert 'VOLUME ["/data"]' in [f"{w} {r}" for w, r in final]
    health = [r for w, r in final if w == "HEALTHCHECK"]
    assert len(health) == 1
    if dockerfile.name.startswith("indexer"):
        assert health[0] == "NONE"  # batch job
    else:
        assert 'CMD ["facekeys-health"]' in health[0] and "--start-period=" in health[0]
        assert "EXPOSE" in words
    assert any(w == "ENTRYPOINT" and "facekeys-entrypoint" in r for w, r in final)
    pip_lines = " ".join(r for w, r in _instructions(dockerfile)
                         if w == "RUN" and ("pip install" in r or "install-locked.sh" in r))
    assert "sh /tmp/lock/install-locked.sh " in pip_lines, "every image installs from requirements.lock"
    if "cuda" in dockerfile.name:
        assert "whl/cpu" not in pip_lines
        assert any(w == "ENV" and "NVIDIA_VISIBLE_DEVICES=all" in r for w, r in final)
        if dockerfile.name.startswith("keystore"):  # no torch: faiss-gpu replaces faiss-cpu
            assert "uninstall -y faiss-cpu" in pip_lines and re.search(r"faiss-gpu==[0-9.]+", pip_lines)
        else:
            assert "torch==" in pip_lines
    elif not dockerfile.name.startswith("keystore"):  # the lock's torch==...+cpu, from PyTorch's CPU wheel index
        assert "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu sh /tmp/lock/install-locked.sh" in pip_lines
    if dockerfile.name == "indexer-cuda.Dockerfile":
        assert "onnxruntime-gpu" in pip_lines


def _not_in_git(folder, names):
    """What a fresh clone lacks: caches, build output, the generated client/facekeys/v1 modules."""
    skip = {n for n in names if n in ("__pycache__", "build", "dist") or n.endswith(".egg-info")}
    if Path(folder).resolve() == (ROOT / "client" / "facekeys").resolve():
        skip.add("v1")
    return skip


def test_build_stage_context_builds_a_wheel(tmp_path):
    """Lay out exactly what keystore.Dockerfile's build stage COPYs, then build the wheel from it the
    way `pip install .[server]` in the image does (minus network: --no-build-isolation)."""
    ctx = tmp_path / "src"
    ctx.mkdir()
    build_stage, froms = [], 0
    for w, r in _instructions(DOCKER / "keystore.Dockerfile"):
        froms += w == "FROM"
        if froms == 2:
            break
        build_stage.append((w, r))
    import shutil

    for w, r in build_stage:
        if w != "COPY":
            continue
        args = [a for a in r.split() if not a.startswith("--")]
        srcs, dst = args[:-1], args[-1]
        if dst.startswith("/"):
            continue  # /tmp/lock/ (requirements.lock, scripts/locked.py)
        for src in srcs:
            for m in ROOT.glob(src):
                target = ctx / (m.name if dst.endswith("/") or dst == "./" else dst.removeprefix("./"))
                if m.is_dir():
                    shutil.copytree(m, target, ignore=_not_in_git)
                else:
                    shutil.copy2(m, target)
    r = run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", tmp_path / "dist", ctx],
            timeout=300)
    assert ok(r), show(r)
    (wheel,) = (tmp_path / "dist").glob("facekeys-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for want in ("facekeys/server/app.py", "facekeys/v1/keystore_pb2.py", "facekeys/v1/keystore_pb2_grpc.py",
                 "facekeys/store/keystore.py", "facekeys/cli.py"):
        assert want in names, want


# -- Compose ---------------------------------------------------------------------------------------------
def test_dclint_compose():
    r = run([require_tool("dclint"), "-c", DEPLOY / ".dclintrc.yaml", "--max-warnings", "0", "--color=false",
             DEPLOY / "compose.yaml"])
    assert ok(r), show(r)


def test_dclint_can_fail(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text((DEPLOY / "compose.yaml").read_text().replace('command: ["serve"]', 'command: ["serve"]\n    restartt: always'))
    assert run([require_tool("dclint"), "-c", DEPLOY / ".dclintrc.yaml", "--color=false", bad]).returncode != 0


def test_compose_references():
    (c,) = load_yaml_docs(DEPLOY / "compose.yaml")
    services = c["services"]
    assert {"keystore", "recovery", "prometheus", "grafana"} <= set(services)
    for name, s in services.items():
        if "build" in s:
            dockerfile = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", s["build"]["dockerfile"])  # the default
            assert (DEPLOY / s["build"]["context"] / dockerfile).is_file(), (name, dockerfile)
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), (name, src)
        for p in s.get("ports", []):
            assert p.startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"
    # Prometheus scrapes the ports the services' config files give.
    (prom,) = load_yaml_docs(PROM / "prometheus.yml")
    targets = {j["job_name"]: j["static_configs"][0]["targets"][0] for j in prom["scrape_configs"]}
    serve = tomllib.loads((DEPLOY / "config" / "serve.toml").read_text())
    rec = tomllib.loads((DEPLOY / "config" / "recover-serve.toml").read_text())
    assert targets["facekeys-keystore"] == f"keystore:{serve['metrics_port']}"
    assert targets["facekeys-recovery"] == f"recovery:{rec['metrics_port']}"
    assert str(serve["metrics_port"]) in services["keystore"]["expose"]
    assert str(serve["health_port"]) in services["keystore"]["expose"]  # not published: probes run inside
    assert f"127.0.0.1:{serve['port']}:{serve['port']}" in services["keystore"]["ports"]
    assert all(str(serve["health_port"]) not in p for p in services["keystore"]["ports"])


def _secret_paths(toml_text: str) -> set[str]:
    """File names under /run/secrets/facekeys/ that a service config refers to."""
    return {v[len(SECRETS_MOUNT):] for v in tomllib.loads(toml_text).values()
            if isinstance(v, str) and v.startswith(SECRETS_MOUNT)}


BOOTSTRAP_DIR = {"keystore": "keystore", "recovery": "recovery"}  # compose service -> facekeys-bootstrap folder
CONFIG_OF = {"keystore": "serve.toml", "recovery": "recover-serve.toml"}


def test_compose_secrets_cover_the_configs(deployment_secrets):
    """Every /run/secrets/facekeys/<file> a config names is a compose secret of that service, read from
    the file facekeys-bootstrap writes under deploy/secrets/facekeys/<service>/ (what up.sh runs)."""
    (c,) = load_yaml_docs(DEPLOY / "compose.yaml")
    top = c["secrets"]
    for svc, folder in BOOTSTRAP_DIR.items():
        wanted = _secret_paths((DEPLOY / "config" / CONFIG_OF[svc]).read_text())
        mounted = {}
        for sec in c["services"][svc]["secrets"]:
            assert sec["target"].startswith(SECRETS_MOUNT), sec
            mounted[sec["target"][len(SECRETS_MOUNT):]] = top[sec["source"]]["file"]
        assert wanted <= set(mounted), (svc, wanted - set(mounted))
        for name, src in mounted.items():
            assert src == f"./secrets/facekeys/{folder}/{name}", (svc, name, src)
            assert (deployment_secrets / folder / name).is_file(), f"facekeys-bootstrap does not write {folder}/{name}"
    # up.sh's one-shot container writes exactly there, and nothing in it is published or networked
    init = c["services"]["secrets-init"]
    assert init["profiles"] == ["tools"] and init["network_mode"] == "none"
    assert init["command"] == ["--dir", "/secrets/facekeys"] and "./secrets:/secrets" in init["volumes"]
    assert init["entrypoint"] == ["facekeys-bootstrap"]
    assert "facekeys-bootstrap" in (DOCKER / "keystore.Dockerfile").read_text()
    assert "secrets-init" in (DEPLOY / "up.sh").read_text()


# -- Kubernetes --------------------------------------------------------------------------------------------
CORE_MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_kubernetes_validate_strict(version):
    r = run([require_tool("kubernetes-validate"), "--strict", "-k", version, *CORE_MANIFESTS], timeout=300)
    assert ok(r), show(r)
    out = r.stdout + r.stderr
    assert "WARN" not in out and "ERROR" not in out, out
    resources = sum(len(load_yaml_docs(p)) for p in CORE_MANIFESTS)
    assert out.count(" passed for resource ") == resources, out


def test_kubernetes_validate_can_fail(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "keystore-statefulset.yaml").read_text().replace("failureThreshold: 180", "failureTreshold: 180"))
    assert run([require_tool("kubernetes-validate"), "--strict", bad], timeout=300).returncode != 0


def _objects() -> list[dict]:
    return [d for p in CORE_MANIFESTS for d in load_yaml_docs(p)]


def _get(kind, name) -> dict:
    (o,) = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return o


def test_kustomization_lists_every_manifest():
    (k,) = load_yaml_docs(K8S / "kustomization.yaml")
    assert sorted(k["resources"]) == sorted(p.name for p in CORE_MANIFESTS)


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_select_their_pods_and_ports():
    workloads = [o for o in _objects() if o["kind"] in ("StatefulSet", "Deployment")]
    for svc in (o for o in _objects() if o["kind"] == "Service"):
        pods = [w for w in workloads if _matches(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        assert len(pods) == 1, svc["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for c in pods[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports and ports[p["targetPort"]] == p["port"], (svc["metadata"]["name"], p)
    sts = _get("StatefulSet", "facekeys-keystore")
    assert sts["spec"]["serviceName"] == "facekeys-keystore-headless"
    assert _matches(sts["spec"]["selector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"])


def test_workloads_probe_and_secure():
    sts = _get("StatefulSet", "facekeys-keystore")
    dep = _get("Deployment", "facekeys-recovery")
    for w, metrics in ((sts, "9100"), (dep, "9101")):
        spec = w["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["enableServiceLinks"] is False
        ann = w["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == metrics
    # Key store: native gRPC probes on the plaintext health-only port (the gRPC port speaks TLS).
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    serve = tomllib.loads(_get("ConfigMap", "facekeys-keystore-config")["data"]["serve.toml"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["health"] == serve["health_port"] != serve["port"] == ports["grpc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == serve["health_port"], probe
    assert c["readinessProbe"]["grpc"]["service"] == "facekeys.v1.KeyStore"
    for svc in (o for o in _objects() if o["kind"] == "Service"):
        assert all(p["port"] != serve["health_port"] for p in svc["spec"]["ports"]), "health port is probe-only"
    # Recovery: no health-only port yet, so exec probes running facekeys-health (TLS, see healthcheck.py).
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"][0] == "facekeys-health", probe
    assert {"name": "FACEKEYS_PROBE_COMMAND", "value": "recover-serve"} in c["env"]
    mounts = {m["name"]: m["mountPath"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["data"] == "/data" and sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The recovery audit log lives on a PVC, not an emptyDir.
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert "persistentVolumeClaim" in vols["data"]
    _get("PersistentVolumeClaim", vols["data"]["persistentVolumeClaim"]["claimName"])


def _kustomization() -> dict:
    (k,) = load_yaml_docs(K8S / "kustomization.yaml")
    return k


def test_secrets_are_mounted_read_only_and_generated(deployment_secrets):
    """Each workload mounts its own Secret read-only (no subPath: updates propagate) at /run/secrets/facekeys;
    the Secret is generated from facekeys-bootstrap's folder and has a key for every file its config names."""
    gens = {g["name"]: g for g in _kustomization()["secretGenerator"]}
    assert _kustomization()["generatorOptions"]["disableNameSuffixHash"] is True
    for kind, name, cm, key, folder in (
            ("StatefulSet", "facekeys-keystore", "facekeys-keystore-config", "serve.toml", "keystore"),
            ("Deployment", "facekeys-recovery", "facekeys-recovery-config", "recover-serve.toml", "recovery")):
        spec = _get(kind, name)["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        (m,) = [m for m in c["volumeMounts"] if m["mountPath"] == SECRETS_MOUNT.rstrip("/")]
        assert m["readOnly"] is True and "subPath" not in m
        (vol,) = [v for v in spec["volumes"] if v["name"] == m["name"]]
        secret = vol["secret"]["secretName"]
        assert vol["secret"]["defaultMode"] in (0o400, 0o440)
        gen = gens[secret]
        files = dict(f.split("=", 1) for f in gen["files"])
        assert _secret_paths(_get("ConfigMap", cm)["data"][key]) <= set(files), (secret, files)
        for k, src in files.items():
            assert src == f"secrets/{folder}/{k}", (secret, k, src)
            assert (deployment_secrets / folder / k).is_file(), f"facekeys-bootstrap does not write {folder}/{k}"
    # Nothing under deploy/k8s/secrets/ but its .gitignore may ever be committed.
    ignore = (K8S / "secrets" / ".gitignore").read_text().splitlines()
    assert "*" in ignore and "!.gitignore" in ignore
    assert not any(o["kind"] == "Secret" for o in _objects()), "no Secret objects (placeholders) in the manifests"


def test_kustomize_builds_with_bootstrap_output(tmp_path, deployment_secrets):
    """`kubectl kustomize` (where kubectl is installed) fails without the secrets folder and builds both
    Secrets with the bootstrap output. Optional: the check above covers the wiring without kubectl."""
    kubectl = find_tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    import shutil

    k = tmp_path / "k8s"
    shutil.copytree(K8S, k, ignore=shutil.ignore_patterns("secrets"))
    assert run([kubectl, "kustomize", k]).returncode != 0  # fails closed
    for folder in ("keystore", "recovery"):
        shutil.copytree(deployment_secrets / folder, k / "secrets" / folder)
    r = run([kubectl, "kustomize", k])
    assert ok(r), show(r)
    yaml = pytest.importorskip("yaml")
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(r.stdout) if d and d["kind"] == "Secret"}
    assert set(secrets) == {"facekeys-keystore-secrets", "facekeys-recovery-secrets"}
    assert {"tls.crt", "tls.key", "credentials.json", "audit.key", "master.key"} <= set(secrets["facekeys-keystore-secrets"]["data"])
    assert "master.key" not in secrets["facekeys-recovery-secrets"]["data"]  # least privilege


def _keystore_configs() -> list[tuple[str, str]]:
    return [("k8s ConfigMap", _get("ConfigMap", "facekeys-keystore-config")["data"]["serve.toml"]),
            ("config/serve.toml", (DEPLOY / "config" / "serve.toml").read_text())]


def test_keystore_configmap_is_a_valid_serve_config(tmp_path, deployment_secrets):
    """The ConfigMap's serve.toml (and config/serve.toml) go through the image's entrypoint and the real
    `facekeys serve` parser and config validation, with facekeys-bootstrap's secrets in place of the
    mounted Secret: listening on 0.0.0.0 is accepted because TLS, credentials and audit are configured."""
    sys.path.insert(0, str(DOCKER))
    import entrypoint
    from facekeys.cli import _server_config, build_parser
    from facekeys.errors import InvalidArgument

    for what, source in _keystore_configs():
        raw = tomllib.loads(source)
        assert raw["data_dir"] == "/data" and raw["audit_log"].startswith("/data/"), what
        assert raw.get("insecure") is not True, what
        f = tmp_path / "serve.toml"
        f.write_text(localize(source, deployment_secrets / "keystore", tmp_path / "data"))
        argv = entrypoint.build_argv("serve", [], {"FACEKEYS_CONFIG": str(f)})
        cfg = _server_config(build_parser().parse_args(argv))
        assert cfg.port == 50051 and cfg.metrics_port == 9100 and cfg.health_port == 50060, what
        assert str(cfg.data_dir) == str(tmp_path / "data") and cfg.host == "0.0.0.0", what
        sec = cfg.security
        for field in ("tls_cert", "tls_key", "credentials_file", "audit_log", "audit_key_file", "grant_key_file",
                      "transform_secret_file", "master_key_file"):
            assert getattr(sec, field) is not None, (what, field)
        assert sec.authenticated and not sec.insecure
        # The security check is real: the same config without credentials is refused.
        bare = "\n".join(l for l in f.read_text().splitlines() if not l.startswith("credentials_file"))
        f.write_text(bare)
        with pytest.raises(InvalidArgument, match="refusing to listen on 0.0.0.0"):
            _server_config(build_parser().parse_args(entrypoint.build_argv("serve", [], {"FACEKEYS_CONFIG": str(f)})))
    # The two copies agree on everything but the map size (the ConfigMap's fits the PVC).
    (_, a), (_, b) = _keystore_configs()
    a, b = tomllib.loads(a), tomllib.loads(b)
    a.pop("map_size"), b.pop("map_size")
    assert a == b
    cm = _get("ConfigMap", "facekeys-keystore-config")
    pvc = _get("StatefulSet", "facekeys-keystore")["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    from facekeys.cli import parse_size

    map_size = parse_size(tomllib.loads(cm["data"]["serve.toml"])["map_size"])
    assert map_size < parse_size(pvc), "the LMDB map must fit on the volume"


def test_recovery_configs_are_valid_recover_serve_configs(tmp_path, deployment_secrets):
    """config/recover-serve.toml and the recovery ConfigMap parse with the real `facekeys recover-serve`
    parser (the entrypoint passes delegated commands' keys unchecked) and pass its security check."""
    rcli = pytest.importorskip("facekeys.recovery.cli", reason="recovery service not installed")
    sys.path.insert(0, str(DOCKER))
    import entrypoint

    sources = [(DEPLOY / "config" / "recover-serve.toml").read_text(),
               _get("ConfigMap", "facekeys-recovery-config")["data"]["recover-serve.toml"]]
    assert tomllib.loads(sources[0]) == tomllib.loads(sources[1])
    f = tmp_path / "recover-serve.toml"
    f.write_text(localize(sources[0], deployment_secrets / "recovery", tmp_path / "data"))
    argv = entrypoint.build_argv("recover-serve", [], {"FACEKEYS_CONFIG": str(f)})
    cfg = rcli.config_from_args(rcli.build_parser().parse_args(argv[1:]))
    assert cfg.host == "0.0.0.0" and cfg.port == 50052 and cfg.metrics_port == 9101
    assert cfg.keystore == "facekeys-keystore:50051" and cfg.keystore_token_file and cfg.keystore_tls_ca
    assert cfg.grant_public_key and cfg.security.authenticated and cfg.security.tls_cert


def _peer_admits(peer: dict, pod_labels: dict) -> bool:
    """Does a NetworkPolicy `from` peer admit a pod with these labels (in some other namespace)?"""
    if "ipBlock" in peer:
        return True
    ps = peer.get("podSelector")
    ns = peer.get("namespaceSelector")
    if ps is None:  # namespace-only peer: every pod of the matching namespaces
        return ns == {}  # conservative: we only know that {} matches the gateway's namespace
    if ns is None:
        return False  # same-namespace only; gateways live elsewhere
    return _matches(ps.get("matchLabels", {}), pod_labels)


def test_networkpolicy_gateways_reach_only_keystore_grpc():
    gateway = {"facekeys.io/role": "gateway", "app": "camera-gateway"}
    policies = [o for o in _objects() if o["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")
               for p in policies), "a default-deny ingress policy is missing"
    reachable = set()
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            if any(_peer_admits(peer, gateway) for peer in rule.get("from", [{}])):
                comp = p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component", "*")
                for port in rule.get("ports", [{"port": "*"}]):
                    reachable.add((comp, port["port"]))
    assert reachable == {("keystore", 50051)}, reachable
    # and that port is the key store's gRPC port
    c = _get("StatefulSet", "facekeys-keystore")["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == 50051


def test_servicemonitor_selects_both_services_metrics_ports():
    monitors = load_yaml_docs(K8S / "optional" / "servicemonitor.yaml")
    names = set()
    for sm in monitors:  # one per service: each checks its own certificate name over HTTPS
        assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
        sel = sm["spec"]["selector"]["matchLabels"]
        (svc,) = [s for s in _objects() if s["kind"] == "Service" and _matches(sel, s["metadata"]["labels"])
                  and s["spec"].get("clusterIP") != "None"]
        (ep,) = sm["spec"]["endpoints"]
        assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
        assert ep["scheme"] == "https" and ep["tlsConfig"]["serverName"].startswith(svc["metadata"]["name"] + ".")
        assert ep["tlsConfig"]["ca"]["secret"]["name"] == svc["metadata"]["name"] + "-secrets"
        names.add(svc["metadata"]["name"])
    assert names == {"facekeys-keystore", "facekeys-recovery"}
    # The rules' job names are the Service names (what the ServiceMonitor yields).
    jobs = set(re.findall(r'job="([^"]+)"', (PROM / "rules.yml").read_text()))
    assert jobs <= {"facekeys-keystore", "facekeys-recovery"}

"""The `facekeys` command line against a real server: outputs, and one-line errors with non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from fkhelpers import random_keys, start_server


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "facekeys.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_enrol_match_get_delete_stats(server_factory, tmp_path):
    srv = server_factory()
    x = random_keys(3, seed=1)
    np.save(tmp_path / "keys.npy", x)
    np.save(tmp_path / "probe.npy", x[1] + 0.01)
    np.savetxt(tmp_path / "boxes.csv", [[0, 1, 2, 30, 40], [1, 2, 3, 30, 40]], delimiter=",", fmt="%d")
    out = run("enroll", tmp_path / "keys.npy", "--server", srv.address, "--encoder-id", "enc", "--identity", "ann",
              "--camera", "cam9", "--boxes", tmp_path / "boxes.csv").stdout
    ids = [json.loads(line)["key_id"] for line in out.splitlines()]
    assert ids == [1, 2, 3]
    res = json.loads(run("match", tmp_path / "probe.npy", "--server", srv.address, "--encoder-id", "enc",
                         "--layers", "1-4", "--top-k", "2").stdout)
    assert res["decision"] == "accepted" and res["hits"][0]["key_id"] == 2 and len(res["hits"]) == 2
    rec = json.loads(run("get", 2, "--server", srv.address, "--latent-out", tmp_path / "k.npy").stdout)
    assert rec["camera_id"] == "cam9" and rec["boxes"] == [[0, 1, 2, 30, 40], [1, 2, 3, 30, 40]]
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), x[1])
    assert json.loads(run("delete", "--identity", "ann", "--server", srv.address).stdout) == {
        "deleted_key_ids": [1, 2, 3]}
    assert json.loads(run("stats", "--server", srv.address).stdout)["keys"] == 0


def test_errors_are_one_line_and_nonzero(server_factory, tmp_path):
    srv = server_factory()
    np.save(tmp_path / "bad.npy", np.zeros((18, 500), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    cases = [
        ("enroll", tmp_path / "bad.npy", "--server", srv.address, "--encoder-id", "e"),
        ("enroll", tmp_path / "junk.npy", "--server", srv.address, "--encoder-id", "e"),
        ("enroll", tmp_path / "missing.npy", "--server", srv.address, "--encoder-id", "e"),
        ("match", tmp_path / "bad.npy", "--server", srv.address, "--encoder-id", "e", "--layers", "5-2"),
        ("get", 12345, "--server", srv.address),
        ("stats", "--server", "127.0.0.1:1", "--timeout", "2"),
    ]
    for args in cases:
        p = run(*args, check=False)
        assert p.returncode == 1, args
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("facekeys: error: "), p.stderr


def test_demo_runs_the_scripted_job(tmp_path):
    p = run("demo", "--data-dir", tmp_path / "d", "--port", 0, "--metrics-port", -1, "--exit")
    assert "enrolled 200 synthetic keys" in p.stdout
    lines = [line for line in p.stdout.splitlines() if line.startswith("probe of")]
    assert len(lines) == 4 and "an impostor: refused" in lines[-1]
    for line in lines[:3]:  # a genuine probe is accepted only as itself (TAR < 1 at FAR 1e-3: it may be refused)
        truth = line.split("probe of")[1].split(":")[0].strip()
        assert "refused" in line or f"ACCEPTED best {truth} " in line


def test_serve_chooses_the_index_mode(tmp_path):
    """`facekeys serve --index-mode ann --ann-backend pq`: Stats reports them; bad choices exit non-zero."""
    from facekeys.client import Client
    from facekeys.records import NewKey

    proc, address = start_server(tmp_path / "d", "--index-mode", "ann", "--ann-backend", "pq")
    try:
        with Client(address) as c:
            c.enroll([NewKey(x, "enc") for x in random_keys(5, seed=3)])
            s = c.stats()
            assert (s.index_mode, s.ann_backend, s.keys) == ("ann", "pq", 5)
            assert c.match(random_keys(5, seed=3)[2], "enc", "all", "l2").results[0].hits[0].key_id == 3
    finally:
        proc.kill()
        proc.wait()
    proc, address = start_server(tmp_path / "e", "--vector-dtype", "float16")
    try:
        with Client(address) as c:
            assert (c.stats().index_mode, c.stats().ann_backend) == ("exact", "")
    finally:
        proc.kill()
        proc.wait()
    for bad in (("--index-mode", "hnsw"), ("--ann-backend", "gpu"), ("--vector-dtype", "int8")):
        p = run("serve", "--data-dir", tmp_path / "f", "--port", 0, *bad, check=False)
        assert p.returncode != 0 and bad[1] in p.stderr


def test_serve_sets_the_ann_groups_candidates_and_refine(tmp_path):
    """`facekeys serve --ann-groups "high:4/128 high:6/64" --ann-candidates N --ann-refine N` reach StoreConfig
    (omitted: its defaults); values StoreConfig refuses exit non-zero with the reason."""
    from facekeys.cli import _server_config, build_parser
    from facekeys.store import StoreConfig

    def store(*argv):
        return _server_config(build_parser().parse_args(["serve", "--data-dir", str(tmp_path / "d"), *argv])).store

    st = store("--index-mode", "ann", "--ann-groups", " high:4/128  high:6/64 ", "--ann-candidates", "8192",
               "--ann-refine", "2048")
    assert (st.ann_groups, st.ann_candidates, st.ann_refine) == (("high:4/128", "high:6/64"), 8192, 2048)
    st, default = store(), StoreConfig()
    assert (st.ann_groups, st.ann_candidates, st.ann_refine) == (default.ann_groups, 0, 0)
    for bad, said in ((("--ann-groups", "high:4/7"), "'high:4/7': m must be one of"),
                      (("--ann-groups", "1-18/64"), "must hold 2..8 layers"),
                      (("--ann-refine", "-1"), "ann_refine must be in"),
                      (("--ann-candidates", "99999"), "ann_candidates must be in")):
        p = run("serve", "--data-dir", tmp_path / "f", "--port", 0, *bad, check=False)
        assert p.returncode != 0 and said in p.stderr, (bad, p.stderr)

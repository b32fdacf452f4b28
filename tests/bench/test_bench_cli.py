"""`facekeys.bench.cli.main`: small end-to-end runs through the real engine, and its one-line errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from facekeys.bench.cli import main
from facekeys.errors import InvalidArgument


def test_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["recall", "--synthetic", "--identities", "50", "--impostor-count", "200", "--out", str(out),
               "--subsets", "high:1,high:4,low:1,low:18", "--target-far", "1e-2", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.startswith("SYNTHETIC recall: 50 gallery keys, 50 genuine + 200 impostor probes")
    assert "StoreConfig.cosine_threshold = " in printed and "StoreConfig.l2_threshold = " in printed
    rows = list(csv.DictReader((out / "recall.csv").open()))
    assert len(rows) == 8 and {r["workload"] for r in rows} == {"SYNTHETIC"}
    acc = {(r["family"], r["k"], r["metric"]): float(r["top1_accuracy"]) for r in rows}
    assert acc[("high", "4", "cosine")] > acc[("low", "1", "cosine")]  # the generator's coarse layers carry identity
    assert all(r["impostors"] == "200" and r["resolved@far=0.001"] == "false" for r in rows)  # 200 < 1/1e-3
    assert all(r["resolved@far=0.01"] == "true" for r in rows)
    md = (out / "recall.md").read_text()
    assert md.startswith("# Recall per layer subset (SYNTHETIC)") and "| 1-4 |" in md and "| 18 |" in md
    for png in ("recall_layers.png", "recall_roc.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_file_inputs_npy_and_txt(tmp_path, hand_data):
    d = hand_data
    np.save(tmp_path / "g.npy", d.gallery)
    (tmp_path / "gl.txt").write_text("A\nB\nC\n")
    np.save(tmp_path / "p.npy", d.probes)
    np.save(tmp_path / "pl.npy", np.array(["A", "B", "C"]))
    np.save(tmp_path / "i.npy", d.impostors)
    rc = main(["recall", "--gallery", str(tmp_path / "g.npy"), "--gallery-labels", str(tmp_path / "gl.txt"),
               "--probes", str(tmp_path / "p.npy"), "--probe-labels", str(tmp_path / "pl.npy"),
               "--impostors", str(tmp_path / "i.npy"), "--out", str(tmp_path / "o"), "--subsets", "high:1,low:1",
               "--metrics", "cosine", "--threshold-layers", "low:1", "--quiet"])
    assert rc == 0
    rows = {r["layers"]: r for r in csv.DictReader((tmp_path / "o" / "recall.csv").open())}
    assert rows["1"]["correct"] == "2" and rows["18"]["correct"] == "3"
    assert rows["1"]["workload"] == "real" and rows["1"]["metric"] == "cosine"
    assert "SYNTHETIC" not in (tmp_path / "o" / "recall.md").read_text()


@pytest.mark.parametrize("argv, message", [
    ([], "give a command"),
    (["recall", "--out", "x"], "missing --gallery"),
    (["recall", "--synthetic", "--out", "x", "--metrics", "cosine,hamming"], "--metrics"),
    (["recall", "--synthetic", "--out", "x", "--target-far", "2"], "false-accept rate"),
    (["recall", "--synthetic", "--out", "x", "--subsets", "mid:3"], "unknown family"),
    (["recall", "--synthetic"], "--out"),
    (["nope"], "invalid choice"),
])
def test_errors_are_invalid_argument(argv, message):
    with pytest.raises(InvalidArgument, match=message):
        main(argv)


def test_images_without_encoder_and_bad_files(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((2, 256, 256, 3), np.uint8))
    (tmp_path / "l.txt").write_text("a\nb\n")
    base = ["recall", "--gallery-labels", str(tmp_path / "l.txt"), "--probes", str(tmp_path / "img.npy"),
            "--probe-labels", str(tmp_path / "l.txt"), "--out", str(tmp_path / "o")]
    with pytest.raises(InvalidArgument, match="give --encoder"):
        main(base + ["--gallery", str(tmp_path / "img.npy")])
    with pytest.raises(InvalidArgument, match="does not exist"):
        main(base + ["--gallery", str(tmp_path / "missing.npy")])
    np.save(tmp_path / "short.npy", np.zeros((3, 18, 512), np.float32))
    with pytest.raises(InvalidArgument, match="does not match 3 latents"):
        main(["recall", "--gallery", str(tmp_path / "short.npy"), "--gallery-labels", str(tmp_path / "l.txt"),
              "--probes", str(tmp_path / "short.npy"), "--probe-labels", str(tmp_path / "l.txt"),
              "--out", str(tmp_path / "o")])

"""facekeys.bench.recall: accuracy through the real engine on hand-placed latents, TAR@FAR, layouts."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from facekeys.bench.recall import (
    OperatingPoint, RecallConfig, RecallData, RecallReport, Subset, SubsetResult, operating_point,
    paper_subsets, roc_curve, run_recall, threshold_at_far,
)
from facekeys.bench.report import accuracy_table, csv_text, markdown, open_set_table
from facekeys.bench.synthetic import SyntheticConfig, make_workload
from facekeys.errors import InvalidArgument


def test_hand_case_accuracy_through_engine(hand_data):
    cfg = RecallConfig(subsets=(Subset("high", 1), Subset("low", 1)), threshold_layers="high:1")
    rep = run_recall(hand_data, cfg)
    for metric in ("cosine", "l2"):
        hi, lo = rep.result("high:1", metric), rep.result("low:1", metric)
        assert (hi.correct, hi.genuine) == (2, 3)
        assert (lo.correct, lo.genuine) == (3, 3)
        assert hi.genuine_correct.tolist() == [True, False, True]
    cos = rep.result("high:1", "cosine")
    np.testing.assert_allclose(cos.genuine_scores, [1 / math.sqrt(1.01), 0.9 / math.sqrt(0.82), 1.0], rtol=1e-6)
    np.testing.assert_allclose(cos.impostor_scores, [0.0], atol=1e-7)
    np.testing.assert_allclose(rep.result("low:1", "l2").genuine_scores, [0.0, 0.0, 0.1], atol=1e-6)
    np.testing.assert_allclose(rep.result("low:1", "l2").impostor_scores, [math.sqrt(2)], rtol=1e-6)
    assert (rep.genuine, rep.impostors, rep.identities) == (3, 1, 3)


def test_recommendation_is_rechecked_by_engine(hand_data):
    rep = run_recall(hand_data, RecallConfig(subsets=(Subset("low", 1),), threshold_layers="low:1", target_far=0.5))
    by = {r.metric: r for r in rep.recommendations}
    # one impostor (cosine 0, L2 sqrt 2): FAR 0.5 allows 0 accepts, so the threshold sits just past it
    assert by["cosine"].point.threshold > 0.0 and by["cosine"].point.threshold < 1e-12
    assert by["l2"].point.threshold < math.sqrt(2) and by["l2"].point.threshold > math.sqrt(2) - 1e-9
    for rec in rep.recommendations:
        assert rec.engine_far == rec.point.achieved_far == 0.0
        assert rec.engine_tar == rec.point.tar == 1.0
        assert rec.point.resolved is False  # 1 impostor cannot resolve FAR 0.5 (needs >= 2)


def test_labels_absent_from_gallery_become_impostors(hand_data):
    d = hand_data
    probes = np.concatenate([d.probes, d.impostors])
    data = RecallData.build(d.gallery, d.gallery_labels, probes, np.array(["A", "B", "C", "Z"]))
    assert len(data.probes) == 3 and len(data.impostors) == 1
    with pytest.raises(InvalidArgument, match="does not match"):
        RecallData.build(d.gallery, ["A", "B"], d.probes, d.probe_labels)
    with pytest.raises(InvalidArgument, match="no probe label"):
        RecallData.build(d.gallery, d.gallery_labels, d.probes, ["X", "Y", "Z"])


# ------------------------------------------------------------------------------------- TAR@FAR


IMP = np.linspace(0.1, 1.0, 10)  # cosine impostor top-1 scores 0.1 .. 1.0
GEN = np.array([0.95, 0.92, 0.85, 0.99])
OK = np.array([True, True, True, False])  # the 0.99 one hit the wrong identity


def test_tar_at_far_cosine_hand_scores():
    p = operating_point("cosine", GEN, OK, IMP, 0.1)  # 1 of 10 impostors may pass: only the 1.0
    assert p.threshold > IMP[8] and p.threshold == pytest.approx(0.9)
    assert p.achieved_far == pytest.approx(0.1) and p.resolved
    assert p.tar == pytest.approx(0.5)  # 0.95 and 0.92 correct and accepted; 0.99 is wrong identity
    p = operating_point("cosine", GEN, OK, IMP, 0.2)  # 2 may pass: 1.0 and 0.9
    assert 0.8 < p.threshold < 0.81 and p.tar == pytest.approx(0.75) and p.achieved_far == pytest.approx(0.2)
    p = operating_point("cosine", GEN, OK, IMP, 0.01)  # unresolvable with 10: zero accepts
    assert p.threshold > 1.0 and p.tar == 0.0 and p.achieved_far == 0.0 and not p.resolved


def test_tar_at_far_l2_is_mirrored():
    imp, gen = 2.0 - IMP, 2.0 - GEN  # distances: lower is better
    p = operating_point("l2", gen, OK, imp, 0.1)
    assert p.threshold < 2.0 - IMP[8] and p.threshold == pytest.approx(1.1)
    assert p.tar == pytest.approx(0.5) and p.achieved_far == pytest.approx(0.1)
    t, resolved = threshold_at_far("l2", np.array([]), 0.1)  # no impostors: no threshold
    assert math.isnan(t) and not resolved


def test_ties_never_exceed_the_far():
    imp = np.array([0.5, 0.5, 0.5, 0.2])  # three tied impostors
    p = operating_point("cosine", np.array([0.6]), np.array([True]), imp, 0.5)  # 2 may pass; ties force 0
    assert p.achieved_far <= 0.5 and p.threshold > 0.5


def test_roc_curve_endpoints():
    far, tar = roc_curve("cosine", GEN, OK, IMP)
    assert far[-1] == 1.0 and tar[-1] == pytest.approx(0.75)  # loosest: all accepted, 3 of 4 correct
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    i = np.searchsorted(far, 0.1, side="right") - 1
    assert tar[i] == pytest.approx(0.5)  # agrees with operating_point at FAR 0.1


# ---------------------------------------------------------------------------------------- layout


def fake_report(impostors: int = 4) -> RecallReport:
    """36 subsets x 2 metrics; accuracy = k/18 for high, (k-1)/18 for low (cosine), l2 one less correct."""
    rng = np.random.default_rng(0)
    rows = []
    for metric in ("cosine", "l2"):
        for s in paper_subsets():
            correct = (s.k if s.family == "high" else s.k - 1) - (metric == "l2" and s.k > 1)
            ok = np.arange(18) < correct
            pts = tuple(OperatingPoint(f, 0.5, 0.25, f, True) for f in (0.1, 0.01, 0.001))
            rows.append(SubsetResult(s, metric, int(correct), 18, rng.random(18), ok, rng.random(impostors), pts))
    return RecallReport("SYNTHETIC", 18, 18, 18, impostors, RecallConfig(), tuple(rows), (), 1.0)


def test_tables_follow_paper_layout():
    rep = fake_report()
    hi = accuracy_table(rep, "high").splitlines()
    assert hi[0] == "| Layers | Cosine (max) top-1 % | L2 (min) top-1 % |"
    assert [ln.split("|")[1].strip() for ln in hi[2:]] == ["1"] + [f"1-{k}" for k in range(2, 19)]
    assert hi[2] == "| 1 | 5.56 | 5.56 |" and hi[-1] == "| 1-18 | 100.00 | 94.44 |"
    lo = accuracy_table(rep, "low").splitlines()
    assert [ln.split("|")[1].strip() for ln in lo[2:]] == ["18"] + [f"{19 - k}-18" for k in range(2, 19)]
    assert lo[2] == "| 18 | 0.00 | 0.00 |"
    ost = open_set_table(rep, "high").splitlines()
    assert ost[0].count("TAR@FAR=") == 6 and ost[2] == "| 1 | " + " | ".join(["25.00"] * 6) + " |"
    md = markdown(rep, {})
    assert "SYNTHETIC" in md.splitlines()[0] and "Table 1" in md and "Table 2" in md


def test_csv_rows_and_columns():
    rows = list(csv.DictReader(io.StringIO(csv_text(fake_report()))))
    assert len(rows) == 72
    assert {r["workload"] for r in rows} == {"SYNTHETIC"}
    r = next(r for r in rows if r["metric"] == "l2" and r["family"] == "low" and r["k"] == "2")
    assert r["layers"] == "17-18" and r["correct"] == "0" and r["top1_accuracy"] == "0.000000"
    assert r["tar@far=0.001"] == "0.250000" and r["threshold@far=0.001"] == "0.5" and r["resolved@far=0.01"] == "true"


def test_config_validation():
    with pytest.raises(InvalidArgument):
        RecallConfig(metrics=("hamming",))
    with pytest.raises(InvalidArgument):
        RecallConfig(target_far=0.0)
    with pytest.raises(InvalidArgument):
        RecallConfig(batch=2000)
    with pytest.raises(InvalidArgument):
        RecallConfig(threshold_layers="mid:3")


# ------------------------------------------------------------------------------------- synthetic


def _top1(g, gl, p, pl, layers):  # numpy reference, cosine
    x = g[:, layers].reshape(len(g), -1)
    q = p[:, layers].reshape(len(p), -1)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return float(np.mean(gl[(q @ x.T).argmax(1)] == pl))


def test_synthetic_defaults_do_not_saturate():
    d = make_workload(SyntheticConfig(identities=300, impostors=0, seed=1))
    high1 = _top1(d.gallery, d.gallery_labels, d.probes, d.probe_labels, [0])
    low1 = _top1(d.gallery, d.gallery_labels, d.probes, d.probe_labels, [17])
    high9 = _top1(d.gallery, d.gallery_labels, d.probes, d.probe_labels, list(range(9)))
    assert 0.6 < high1 < 0.99  # layer 1 alone: informative but not perfect
    assert low1 < 0.2  # layer 18 alone: barely
    assert high9 > 0.97 and high9 > high1


def test_synthetic_shapes_and_labels():
    d = make_workload(SyntheticConfig(identities=5, impostors=3, keys_per_identity=2))
    assert d.gallery.shape == (10, 18, 512) and d.gallery.dtype == np.float32
    assert d.probes.shape == (8, 18, 512) and d.probe_labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert d.latent_avg.shape == (18, 512)
    with pytest.raises(InvalidArgument):
        SyntheticConfig(identities=0)

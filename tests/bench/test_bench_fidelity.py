"""facekeys.bench.fidelity: metric code on hand-made images; the sweep's plumbing with a stand-in generator."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from facekeys.bench.fidelity import (
    available_scorers, fidelity_csv, fidelity_markdown, mix_latents, pixel_l2, plot_fidelity, run_fidelity,
)
from facekeys.bench.recall import Subset
from facekeys.errors import InvalidArgument


def test_pixel_l2_hand_values():
    black = np.zeros((1, 4, 4, 3), np.uint8)
    white = np.full((1, 4, 4, 3), 255, np.uint8)
    half = black.copy()
    half[:, :2] = 255  # half the pixels differ by the full range
    np.testing.assert_allclose(pixel_l2(np.concatenate([black, black, black]), np.concatenate([black, white, half])),
                               [0.0, 4.0, 2.0])
    with pytest.raises(InvalidArgument):
        pixel_l2(black, np.zeros((1, 4, 5, 3), np.uint8))


def test_mix_latents_keeps_only_the_subset():
    keys = np.ones((2, 18, 512), np.float32)
    avg = np.zeros((18, 512), np.float32)
    mixed = mix_latents(keys, avg, Subset("low", 2).layers)
    assert mixed[:, 16:].min() == 1.0 and mixed[:, :16].max() == 0.0
    assert keys.min() == 1.0  # input untouched


def _generate(w: np.ndarray) -> np.ndarray:
    """Stand-in generator: brightness = 255 * fraction of layers that differ from latent_avg (zeros)."""
    frac = (np.abs(w).sum(2) > 0).mean(1)  # (N,)
    return np.broadcast_to(np.round(255 * frac)[:, None, None, None], (len(w), 8, 8, 3)).astype(np.uint8)


def test_sweep_plumbing_and_outputs(tmp_path):
    keys = np.ones((3, 18, 512), np.float32)
    originals = np.full((3, 8, 8, 3), 255, np.uint8)  # what the full key regenerates
    subsets = [Subset("high", k) for k in (1, 9, 18)]
    rep = run_fidelity(originals, keys, np.zeros(512, np.float32), _generate, subsets, {"pixel_l2": pixel_l2},
                       {"lpips": "LPIPS skipped: test"})
    by_k = {r.subset.k: r.means["pixel_l2"] for r in rep.rows}
    assert by_k[18] == 0.0  # all layers kept: exact
    assert by_k[1] == pytest.approx((2 - 2 * round(255 / 18) / 255) ** 2)  # 1 of 18 layers kept
    assert by_k[1] > by_k[9] > by_k[18]
    assert fidelity_csv(rep).splitlines()[0] == "family,k,layers,images,pixel_l2"
    md = fidelity_markdown(rep)
    assert "| high | 1-9 | 3 |" in md and "- lpips: LPIPS skipped: test" in md
    assert plot_fidelity(rep, tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InvalidArgument, match="does not match"):
        run_fidelity(np.zeros((3, 4, 4, 3), np.uint8), keys, np.zeros(512), _generate, subsets, {})


def test_unavailable_metrics_are_skipped_with_a_reason():
    scorers, skipped = available_scorers()
    assert "pixel_l2" in scorers
    for name, module in (("lpips", "lpips"), ("identity_distance", "face_recognition")):
        if importlib.util.find_spec(module) is None:
            assert name not in scorers and "skipped" in skipped[name]
        else:
            assert name in scorers or "skipped" in skipped[name]

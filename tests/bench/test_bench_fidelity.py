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


@pytest.mark.slow
def test_fidelity_cli_with_random_generator_weights(tmp_path, capsys):
    """Plumbing only: random-init thin StyleGAN2 (1024 px out) from facekeys.models; numbers mean nothing."""
    pytest.importorskip("torch")
    from facekeys.bench.cli import main
    from facekeys.models.checkpoint import save_random_stylegan2_checkpoint
    from facekeys.models.stylegan2 import GeneratorConfig

    ckpt = save_random_stylegan2_checkpoint(tmp_path / "g.pt", seed=3, config=GeneratorConfig(
        channels=(8, 8, 8, 8, 8, 4, 4, 4, 4)))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img.npy", rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))
    np.save(tmp_path / "lat.npy", rng.standard_normal((1, 18, 512)).astype(np.float32))
    rc = main(["fidelity", "--generator", str(ckpt), "--images", str(tmp_path / "img.npy"), "--latents",
               str(tmp_path / "lat.npy"), "--out", str(tmp_path / "o"), "--ks", "1,18", "--families", "high"])
    assert rc == 0
    lines = (tmp_path / "o" / "fidelity.csv").read_text().splitlines()
    assert lines[0].startswith("family,k,layers,images,pixel_l2") and len(lines) == 3
    assert all(0.0 <= float(ln.split(",")[4]) <= 4.0 for ln in lines[1:])
    assert (tmp_path / "o" / "fidelity.png").is_file()

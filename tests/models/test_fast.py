"""The fast CPU paths (facekeys.models.fast) against the float32 reference modules.

Random weights in the official layout (seeded writers of checkpoint.py): this proves the re-arranged maths
computes the reference's images and keys up to float32 rounding, not quality. Keys are both random W+ and
realistic ones (mapping-network outputs, truncated towards the mean, mixed per layer like pSp's W+).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facekeys.errors import InvalidArgument
from facekeys.models import FaceEncoder, FaceGenerator, load_psp, load_stylegan2
from facekeys.models.checkpoint import save_random_psp_checkpoint, save_random_stylegan2_checkpoint
from facekeys.models.fast import FastEncoder, FastSynthesis, supports
from facekeys.models.psp import SMALL_ENCODER
from facekeys.models.stylegan2 import OFFICIAL_GENERATOR, Generator, GeneratorConfig

MIN_PSNR_DB = 40.0
# 128x128, every layer kind, channel counts that differ per resolution (so a mixed-up weight cannot pass)
MID_GEN = GeneratorConfig(size=128, channel_multiplier=1, channels=(64, 48, 32, 32, 24, 16))


def psnr(a: torch.Tensor, b: torch.Tensor, peak_to_peak: float = 2.0) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak**2 / mse)


def realistic_keys(g: Generator, n: int, seed: int, truncation: float = 0.7) -> torch.Tensor:
    """W+ (n, n_latent, 512): mapped z per layer, truncated towards the mean of 2000 mapped z."""
    cfg = g.config
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mean = g.mapping(torch.randn(2000, cfg.style_dim, generator=gen)).mean(0)  # (512,)
        w = g.mapping(torch.randn(n * cfg.n_latent, cfg.style_dim, generator=gen)).reshape(n, cfg.n_latent, -1)
        return mean + truncation * (w - mean)  # (n, n_latent, 512)


def random_keys(g: Generator, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, g.config.n_latent, g.config.style_dim, generator=gen)  # (n, n_latent, 512)


def reference(g: Generator, w: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return g(w, input_is_latent=True, randomize_noise=False)


@pytest.fixture(scope="module")
def mid_generator(tmp_path_factory) -> Generator:
    path = save_random_stylegan2_checkpoint(tmp_path_factory.mktemp("fast") / "sg2_mid.pt", seed=5, config=MID_GEN)
    return load_stylegan2(path).generator


@pytest.mark.parametrize("keys", ["random", "realistic"])
def test_fast_generator_matches_reference(mid_generator, keys):
    g = mid_generator
    w = random_keys(g, 3, seed=1) if keys == "random" else realistic_keys(g, 3, seed=2)
    want = reference(g, w)  # (3, 3, 128, 128)
    got = FastSynthesis(g)(w)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert want.std() > 0.05  # a real image signal, not a constant
    for i in range(w.shape[0]):
        assert psnr(got[i], want[i]) >= MIN_PSNR_DB, f"{keys} key {i}: {psnr(got[i], want[i]):.1f} dB"
    # the measure can fail: another face, or the stored noise left out, is far below the threshold
    assert psnr(got[0], want[1]) < 20.0
    g2 = Generator(g.config).eval().requires_grad_(False)
    g2.load_state_dict(g.state_dict())
    for b in g2.stored_noise():
        b.zero_()
    assert psnr(FastSynthesis(g2)(w[:1])[0], want[0]) < MIN_PSNR_DB


def test_fast_generator_batch_equals_single(mid_generator):
    w = realistic_keys(mid_generator, 3, seed=3)
    fast = FastSynthesis(mid_generator)
    batch = fast(w)
    singles = torch.cat([fast(w[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-4)  # batched style matmuls round differently
    assert fast(w[:1]).shape == (1, 3, 128, 128)


def test_fast_generator_follows_weight_changes(mid_generator):
    g = Generator(MID_GEN).eval().requires_grad_(False)
    g.load_state_dict(mid_generator.state_dict())
    fast = FastSynthesis(g)
    w = realistic_keys(g, 1, seed=4)
    before = fast(w)
    with torch.no_grad():
        g.convs[3].conv.weight.mul_(-1.0)  # cached prepared weights must be rebuilt
        g.noises.noise_4.mul_(3.0)  # and the cached noise addends
    want = reference(g, w)
    assert psnr(fast(w)[0], want[0]) >= MIN_PSNR_DB
    assert psnr(before[0], want[0]) < MIN_PSNR_DB


def test_non_binomial_blur_is_refused(tmp_path):
    cfg = GeneratorConfig(size=16, channel_multiplier=1, channels=(8, 8, 8), blur_kernel=(1, 2, 1))
    g = Generator(cfg)
    assert not supports(g)
    with pytest.raises(ValueError):
        FastSynthesis(g)
    assert supports(Generator(GeneratorConfig(size=16, channel_multiplier=1, channels=(8, 8, 8))))


def test_face_generator_impls(tmp_path, mid_generator, rng):
    path = save_random_stylegan2_checkpoint(tmp_path / "sg2.pt", seed=5, config=MID_GEN)
    auto = FaceGenerator(path, device="cpu")
    ref = FaceGenerator(path, device="cpu", impl="reference")
    assert auto.impl == "fast" and ref.impl == "reference"
    keys = realistic_keys(mid_generator, 2, seed=6).numpy()
    a, r = auto.generate(keys), ref.generate(keys)  # (2, 128, 128, 3) uint8
    assert psnr(torch.from_numpy(a).float(), torch.from_numpy(r).float(), 255.0) >= MIN_PSNR_DB
    assert np.abs(a.astype(int) - r.astype(int)).max() <= 1
    with pytest.raises(InvalidArgument):
        FaceGenerator(path, device="cpu", impl="quick")


def test_fast_encoder_matches_reference(tmp_path, rng):
    path = save_random_psp_checkpoint(tmp_path / "psp.pt", seed=9, encoder_config=SMALL_ENCODER,
                                      generator_config=GeneratorConfig(channels=(8, 8, 8, 8, 8, 4, 4, 4, 4)))
    enc = load_psp(path, decoder=False).encoder
    x = torch.from_numpy(rng.uniform(-1, 1, size=(3, 3, 256, 256)).astype(np.float32))  # (3, 3, 256, 256)
    with torch.no_grad():
        want = enc(x)  # (3, 18, 512)
    got = FastEncoder(enc)(x)  # re-points the heads' parameters into stacked tensors
    with torch.no_grad():
        assert torch.equal(enc(x), want)  # the reference module still computes exactly what it did
    cos = torch.nn.functional.cosine_similarity(got, want, dim=2)  # (3, 18): per face, per layer
    assert cos.min().item() >= 0.9999
    assert torch.nn.functional.cosine_similarity(got[0], want[1], dim=1).min() < 0.9999  # can fail
    images = rng.integers(0, 256, size=(2, 256, 256, 3), dtype=np.uint8)
    auto = FaceEncoder(path, device="cpu")
    assert auto.impl == "fast" and FaceEncoder(path, device="cpu", impl="reference").impl == "reference"
    keys = torch.from_numpy(auto.encode(images))
    ref_keys = torch.from_numpy(FaceEncoder(path, device="cpu", impl="reference").encode(images))
    assert keys.shape == ref_keys.shape == (2, 18, 512)
    assert torch.nn.functional.cosine_similarity(keys, ref_keys, dim=2).min().item() >= 0.9999
    # one face goes through the reference module (faster at batch 1): exactly the reference's key
    assert np.array_equal(auto.encode(images[:1]), FaceEncoder(path, device="cpu", impl="reference").encode(images[:1]))


@pytest.mark.slow
def test_fast_generator_full_size(tmp_path):
    """The official 1024 config-f layout, random weights: random and realistic keys, PSNR >= 40 dB each."""
    path = save_random_stylegan2_checkpoint(tmp_path / "sg2_full.pt", seed=0, config=OFFICIAL_GENERATOR)
    g = load_stylegan2(path).generator
    fast = FastSynthesis(g)
    for w in (random_keys(g, 1, seed=7), realistic_keys(g, 1, seed=8)):
        want = reference(g, w)  # (1, 3, 1024, 1024)
        got = fast(w)
        assert want.std() > 0.05
        assert psnr(got, want) >= MIN_PSNR_DB

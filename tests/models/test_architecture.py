"""State-dict layouts against the spec's key lists, shapes, W+ routing, determinism, input checks.

Weights are random throughout: these tests prove plumbing and layout, not image or key quality.
The full-size models are built on the meta device here (no memory, no forward).
"""

from __future__ import annotations

import pytest
import torch

from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import InvalidArgument
from facekeys.models.psp import OFFICIAL_ENCODER, SMALL_ENCODER, GradualStyleEncoder
from facekeys.models.stylegan2 import OFFICIAL_GENERATOR, Generator, GeneratorConfig

TINY_GEN = GeneratorConfig(size=32, channel_multiplier=1, channels=(32, 32, 16, 16))  # as conftest's tiny_gen_config


def _layout(sd) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()]


def test_full_generator_layout_equals_spec(g_keys):
    with torch.device("meta"):
        g = Generator()
    want = [(e["key"], tuple(e["shape"]), e["dtype"]) for e in g_keys]
    assert len(want) == 171
    assert _layout(g.state_dict()) == want  # same keys, shapes, dtypes and order
    assert sum(p.numel() for p in g.parameters()) == 30_370_060
    assert sum(b.numel() for b in g.buffers()) == 2_796_432
    assert g.n_latent == N_LAYERS and OFFICIAL_GENERATOR.style_dim == DIM


def test_full_encoder_layout_equals_spec(psp_keys):
    with torch.device("meta"):
        e = GradualStyleEncoder()
    want = [(x["key"].removeprefix("encoder."), tuple(x["shape"]), x["dtype"]) for x in psp_keys if x["key"].startswith("encoder.")]
    assert len(want) == 621
    assert _layout(e.state_dict()) == want
    assert sum(p.numel() for p in e.parameters()) == 267_136_704
    assert sum(b.numel() for b in e.buffers()) == 24_372


def test_psp_decoder_entries_equal_generator_layout(psp_keys, g_keys):
    dec = [(x["key"].removeprefix("decoder."), x["shape"]) for x in psp_keys if x["key"].startswith("decoder.")]
    assert dec == [(x["key"], x["shape"]) for x in g_keys]


def test_noise_buffer_shapes():
    with torch.device("meta"):
        g = Generator()
    for i, n in enumerate(g.stored_noise()):
        r = (i + 5) // 2
        assert tuple(n.shape) == (1, 1, 2**r, 2**r)


@pytest.fixture(scope="module")
def tiny_gen() -> Generator:
    torch.manual_seed(0)
    g = Generator(TINY_GEN).eval()
    with torch.no_grad():
        for m in g.modules():
            if hasattr(m, "weight") and m.__class__.__name__ == "NoiseInjection":
                m.weight.fill_(0.3)  # make the stored noise matter
    return g


def test_generator_shapes_and_determinism(tiny_gen):
    w = torch.randn(2, TINY_GEN.n_latent, DIM)
    with torch.no_grad():
        a = tiny_gen(w)
        b = tiny_gen(w)
        c = tiny_gen(w, randomize_noise=True)
    assert a.shape == (2, 3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b)  # stored noise: bitwise repeatable
    assert not torch.equal(a, c)


def test_generator_w_and_z_inputs(tiny_gen):
    w = torch.randn(3, DIM)
    with torch.no_grad():
        torch.testing.assert_close(tiny_gen(w), tiny_gen(w[:, None].expand(-1, TINY_GEN.n_latent, -1)))
        z = torch.randn(2, DIM)
        torch.testing.assert_close(tiny_gen(z, input_is_latent=False), tiny_gen(tiny_gen.mapping(z)), rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError):
            tiny_gen(torch.randn(1, TINY_GEN.n_latent + 1, DIM))


def test_wplus_routing_matches_spec(tiny_gen):
    """conv1 <- 0, to_rgb1 <- 1, convs.2k <- 2k+1, convs.2k+1 <- 2k+2, to_rgbs.k <- 2k+3 (spec §3.10)."""
    n = TINY_GEN.n_latent
    w = torch.arange(n, dtype=torch.float32)[None, :, None].expand(1, n, DIM).clone()  # row i is all i
    seen: dict[str, float] = {}
    hooks = []
    for name, m in tiny_gen.named_modules():
        if name.endswith(".modulation"):
            layer = name.removesuffix(".conv.modulation")
            hooks.append(m.register_forward_hook(lambda mod, inp, out, layer=layer: seen.__setitem__(layer, inp[0][0, 0].item())))
    with torch.no_grad():
        tiny_gen(w)
    for h in hooks:
        h.remove()
    want = {"conv1": 0, "to_rgb1": 1}
    for k in range(len(tiny_gen.to_rgbs)):
        want[f"convs.{2 * k}"] = 2 * k + 1
        want[f"convs.{2 * k + 1}"] = 2 * k + 2
        want[f"to_rgbs.{k}"] = 2 * k + 3
    assert seen == want
    assert max(want.values()) == n - 1


def test_generator_config_validation():
    assert GeneratorConfig(size=64).n_latent == 10
    with pytest.raises(ValueError):
        GeneratorConfig(size=100)
    with pytest.raises(ValueError):
        GeneratorConfig(size=32, channels=(8, 8))


@pytest.fixture(scope="module")
def small_encoder() -> GradualStyleEncoder:
    torch.manual_seed(0)
    return GradualStyleEncoder(SMALL_ENCODER).eval()


def test_encoder_output_shape_and_determinism(small_encoder):
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        a, b = small_encoder(x), small_encoder(x)
        one = small_encoder(x[1:])
    assert a.shape == (2, N_LAYERS, DIM) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    torch.testing.assert_close(one[0], a[1], rtol=1e-4, atol=1e-6)  # batch invariance up to rounding


def test_encoder_style_heads_have_spec_depths():
    with torch.device("meta"):
        e = GradualStyleEncoder(OFFICIAL_ENCODER)
    depths = [sum(isinstance(m, torch.nn.Conv2d) for m in s.convs) for s in e.styles]
    assert depths == [4] * 3 + [5] * 4 + [6] * 11


@pytest.mark.parametrize("shape", [(1, 3, 255, 256), (1, 3, 512, 512), (1, 4, 256, 256), (3, 256, 256)])
def test_encoder_rejects_other_input_sizes(small_encoder, shape):
    with pytest.raises(InvalidArgument):
        small_encoder(torch.zeros(shape))
    with torch.device("meta"):
        full = GradualStyleEncoder()
        with pytest.raises(InvalidArgument):
            full(torch.zeros(shape))

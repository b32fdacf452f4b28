"""Checked checkpoint loading with random weights written in the official layouts.

Random weights prove plumbing and loading only, not quality: the real checkpoints are the meaningful test.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import pytest
import torch

from facekeys.errors import InvalidArgument
from facekeys.models.checkpoint import (
    CheckpointError,
    _random_generator_state,
    encoder_id,
    load_generator,
    load_psp,
    load_stylegan2,
    save_random_stylegan2_checkpoint,
)
from facekeys.models.psp import SMALL_ENCODER, GradualStyleEncoder
from facekeys.models.stylegan2 import OFFICIAL_GENERATOR, Generator


def _raw(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _x(seed=0, b=2):
    return torch.rand(b, 3, 256, 256, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _w(n_latent, seed=0, b=2):
    return torch.randn(b, n_latent, 512, generator=torch.Generator().manual_seed(seed))


def test_psp_round_trip_is_exact(tiny_psp_path):
    raw = _raw(tiny_psp_path)
    assert set(raw) >= {"state_dict", "opts", "latent_avg"}
    loaded = load_psp(tiny_psp_path)
    for k, v in loaded.encoder.state_dict().items():
        assert torch.equal(v, raw["state_dict"]["encoder." + k]), k
    for k, v in loaded.generator.state_dict().items():
        assert torch.equal(v, raw["state_dict"]["decoder." + k]), k
    # an independently built module with the ordinary strict load gives bitwise the same outputs
    enc = GradualStyleEncoder(SMALL_ENCODER).eval()
    enc.load_state_dict({k[8:]: v for k, v in raw["state_dict"].items() if k.startswith("encoder.")}, strict=True)
    gen = Generator(loaded.generator.config).eval()
    gen.load_state_dict({k[8:]: v for k, v in raw["state_dict"].items() if k.startswith("decoder.")}, strict=True)
    with torch.no_grad():
        assert torch.equal(loaded.encoder(_x()), enc(_x()))
        assert torch.equal(loaded.generator(_w(18, b=1)), gen(_w(18, b=1)))
    assert loaded.latent_avg.shape == (18, 512)
    assert torch.equal(loaded.latent_avg, raw["latent_avg"])
    assert not any(p.requires_grad for p in loaded.encoder.parameters())
    assert not loaded.encoder.training


def test_stylegan2_round_trip_is_exact(tiny_sg2_path, tiny_gen_config):
    raw = _raw(tiny_sg2_path)
    loaded = load_stylegan2(tiny_sg2_path)
    gen = Generator(tiny_gen_config).eval()
    gen.load_state_dict(raw["g_ema"], strict=True)
    with torch.no_grad():
        assert torch.equal(loaded.generator(_w(8)), gen(_w(8)))
    assert torch.equal(loaded.latent_avg, raw["latent_avg"])


def test_full_size_stylegan2_file_round_trip(tmp_path, g_keys):
    """The real 1024 layout written and loaded back (no forward: that is the slow test's job)."""
    state = _random_generator_state(OFFICIAL_GENERATOR, torch.Generator().manual_seed(0))
    assert [(k, list(v.shape)) for k, v in state.items()] == [(e["key"], e["shape"]) for e in g_keys]
    path = save_random_stylegan2_checkpoint(tmp_path / "stylegan2-ffhq-config-f.pt", seed=3)
    assert "facekeys_random_config" not in _raw(path)  # official layout, nothing extra
    g = load_stylegan2(path).generator
    assert g.config == OFFICIAL_GENERATOR
    for k, v in g.state_dict().items():
        assert v.shape == state[k].shape


def test_decoder_from_psp_equals_same_weights_as_rosinality_file(tmp_path, tiny_psp_path):
    raw = _raw(tiny_psp_path)
    g_ema = OrderedDict((k[8:], v) for k, v in raw["state_dict"].items() if k.startswith("decoder."))
    path = tmp_path / "sg2.pt"
    torch.save({"g_ema": g_ema, "latent_avg": raw["latent_avg"][0], "facekeys_random_config": raw["facekeys_random_config"]}, path)
    a, b = load_generator(tiny_psp_path), load_generator(path)
    with torch.no_grad():
        assert torch.equal(a(_w(18, b=1)), b(_w(18, b=1)))


def _mutated_psp(tmp_path, src, mutate):
    raw = _raw(src)
    mutate(raw)
    path = tmp_path / "mutated.pt"
    torch.save(raw, path)
    return path


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda r: r["state_dict"].pop("encoder.body.1.res_layer.3.weight"), "missing key 'encoder.body.1.res_layer.3.weight'"),
        (lambda r: r["state_dict"].pop("decoder.convs.2.noise.weight"), "missing key 'decoder.convs.2.noise.weight'"),
        (lambda r: r["state_dict"].pop("decoder.noises.noise_3"), "missing key 'decoder.noises.noise_3'"),
        (lambda r: r["state_dict"].__setitem__("encoder.styles.0.extra", torch.zeros(1)), "unexpected key 'encoder.styles.0.extra'"),
        (lambda r: r["state_dict"].__setitem__("face_pool.weight", torch.zeros(1)), "unexpected key 'face_pool.weight'"),
        (lambda r: r["state_dict"].__setitem__("encoder.latlayer1.bias", torch.zeros(63)), "'encoder.latlayer1.bias' has shape [63]"),
        (lambda r: r["state_dict"].__setitem__("decoder.to_rgbs.1.bias", torch.zeros(3)), "'decoder.to_rgbs.1.bias' has shape [3]"),
        (lambda r: r["state_dict"].__setitem__("encoder.input_layer.1.num_batches_tracked", torch.tensor(1.0)), "num_batches_tracked"),
        (lambda r: r.pop("latent_avg"), "latent_avg"),
        (lambda r: r.__setitem__("latent_avg", torch.zeros(17, 512)), "latent_avg"),
        (lambda r: r.pop("state_dict"), "state_dict"),
    ],
)
def test_psp_bad_checkpoint_names_the_key(tmp_path, tiny_psp_path, mutate, needle):
    path = _mutated_psp(tmp_path, tiny_psp_path, mutate)
    with pytest.raises(CheckpointError, match=None) as ei:
        load_psp(path)
    assert needle in str(ei.value)
    assert isinstance(ei.value, InvalidArgument)


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda r: r["g_ema"].pop("style.3.bias"), "missing key 'style.3.bias'"),
        (lambda r: r["g_ema"].__setitem__("convs.0.conv.weight", torch.zeros(1, 31, 32, 3, 3)), "'convs.0.conv.weight' has shape"),
        (lambda r: r["g_ema"].__setitem__("upsamples.0.kernel", torch.zeros(4, 4)), "unexpected key 'upsamples.0.kernel'"),
        (lambda r: r["g_ema"].pop("noises.noise_0"), "missing key 'noises.noise_0'"),
        (lambda r: r.pop("g_ema"), "g_ema"),
    ],
)
def test_stylegan2_bad_checkpoint_names_the_key(tmp_path, tiny_sg2_path, mutate, needle):
    path = _mutated_psp(tmp_path, tiny_sg2_path, mutate)
    with pytest.raises(CheckpointError) as ei:
        load_stylegan2(path)
    assert needle in str(ei.value)


def test_missing_kernel_buffers_are_filled(tmp_path, tiny_psp_path, tiny_sg2_path):
    def drop_kernels(sd):
        for k in [k for k in sd if k.endswith(("blur.kernel", "upsample.kernel"))]:
            del sd[k]

    p1 = _mutated_psp(tmp_path, tiny_psp_path, lambda r: drop_kernels(r["state_dict"]))
    p2 = tmp_path / "sg2_nokernel.pt"
    raw = _raw(tiny_sg2_path)
    drop_kernels(raw["g_ema"])
    torch.save(raw, p2)
    want = torch.tensor([[1, 3, 3, 1], [3, 9, 9, 3], [3, 9, 9, 3], [1, 3, 3, 1]], dtype=torch.float32) / 16
    for new, ref in ((p1, tiny_psp_path), (p2, tiny_sg2_path)):
        g, g_ref = load_generator(new), load_generator(ref)
        assert torch.equal(g.convs[0].conv.blur.kernel, want)
        assert torch.equal(g.to_rgbs[1].upsample.kernel, want)
        with torch.no_grad():
            n = g.n_latent
            assert torch.equal(g(_w(n, b=1)), g_ref(_w(n, b=1)))


@pytest.mark.parametrize("shape", [(512,), (18, 512), (1, 18, 512)])
def test_latent_avg_shapes_accepted(tmp_path, tiny_psp_path, shape):
    row = torch.arange(512, dtype=torch.float32)
    path = _mutated_psp(tmp_path, tiny_psp_path, lambda r: r.__setitem__("latent_avg", row.expand(shape).clone()))
    got = load_psp(path, decoder=False).latent_avg
    assert got.shape == (18, 512) and torch.equal(got, row.expand(18, 512))


def test_stylegan2_latent_avg_optional(tmp_path, tiny_gen_config):
    path = save_random_stylegan2_checkpoint(tmp_path / "g.pt", seed=1, config=tiny_gen_config, with_latent_avg=False)
    assert load_stylegan2(path).latent_avg is None


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_psp(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_psp(junk)
    listy = tmp_path / "list.pt"
    torch.save([1, 2, 3], listy)
    with pytest.raises(CheckpointError, match="top level"):
        load_stylegan2(listy)


class _Evil:
    def __reduce__(self):
        return (print, ("pickle payload ran",))


def test_weights_only_refuses_arbitrary_objects(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "opts": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_psp(path)
    assert "pickle payload ran" not in capsys.readouterr().out


def test_encoder_id_is_name_plus_streamed_digest(tmp_path, tiny_psp_path):
    digest = hashlib.sha256(tiny_psp_path.read_bytes()).hexdigest()[:16]
    assert encoder_id(tiny_psp_path) == f"psp_ffhq_encode:sha256:{digest}"
    assert encoder_id(tiny_psp_path, "other") == f"other:sha256:{digest}"
    other = tmp_path / "o.pt"
    other.write_bytes(tiny_psp_path.read_bytes()[:-1] + b"x")
    assert encoder_id(other) != encoder_id(tiny_psp_path)
    with pytest.raises(CheckpointError):
        encoder_id(tmp_path / "missing.pt")


def test_writer_is_deterministic_in_seed(tmp_path, tiny_gen_config):
    a = save_random_stylegan2_checkpoint(tmp_path / "a.pt", seed=5, config=tiny_gen_config)
    b = save_random_stylegan2_checkpoint(tmp_path / "b.pt", seed=5, config=tiny_gen_config)
    c = save_random_stylegan2_checkpoint(tmp_path / "c.pt", seed=6, config=tiny_gen_config)
    ra, rb, rc = _raw(a)["g_ema"], _raw(b)["g_ema"], _raw(c)["g_ema"]
    assert all(torch.equal(ra[k], rb[k]) for k in ra)
    assert not torch.equal(ra["convs.0.conv.weight"], rc["convs.0.conv.weight"])

"""Checked loading (and random writing) of the official pSp and rosinality StyleGAN2 checkpoints.

Loading policy (spec models.md §2.9, §3.12):
- `torch.load(..., map_location="cpu", weights_only=True)`; memory-mapped when the file is a zip archive.
- Every state_dict key and shape is compared with the architecture (hard-coded, never read from `opts`).
  The first missing, unexpected or mis-shaped key is named in a `CheckpointError` (an `InvalidArgument`).
- Lenient only for the 16 constant FIR kernel buffers (`*.conv.blur.kernel`, `to_rgbs.*.upsample.kernel`):
  when absent they are filled with outer([1,3,3,1], [1,3,3,1]) / 16.
- Missing noise buffers (`noises.noise_i`) are an error. facekeys always decodes with the stored noise
  (randomize_noise=False) so that regenerating a key is reproducible; silently using zero or fresh noise
  would change every image. Use the pSp file's `decoder.*` weights, which carry their noise buffers.

Random checkpoints written by `save_random_*` use exactly the official layouts. They prove plumbing and
loading only, not quality. When they use a non-official architecture they record it under the top-level
key `facekeys_random_config`, which the loaders honour; the official files never contain that key.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from facekeys.dims import DIM, N_LAYERS
from facekeys.errors import InvalidArgument

from .ops import make_blur_kernel
from .psp import OFFICIAL_ENCODER, SMALL_ENCODER, EncoderConfig, GradualStyleEncoder
from .stylegan2 import OFFICIAL_GENERATOR, SMALL_GENERATOR, Generator, GeneratorConfig

__all__ = [
    "CheckpointError",
    "LoadedPsp",
    "LoadedStyleGAN2",
    "load_psp",
    "load_stylegan2",
    "load_generator",
    "encoder_id",
    "save_random_psp_checkpoint",
    "save_random_stylegan2_checkpoint",
]

PSP_MODEL_NAME = "psp_ffhq_encode"
_CONFIG_KEY = "facekeys_random_config"
_KERNEL_SUFFIXES = (".conv.blur.kernel", ".upsample.kernel")


class CheckpointError(InvalidArgument):
    """A checkpoint file is unreadable or does not match the expected architecture."""


@dataclass(frozen=True)
class LoadedPsp:
    encoder: GradualStyleEncoder | None  # eval mode, no grad
    generator: Generator | None  # from the decoder.* entries
    latent_avg: torch.Tensor  # (18, 512)
    opts: dict


@dataclass(frozen=True)
class LoadedStyleGAN2:
    generator: Generator
    latent_avg: torch.Tensor | None  # (512,) when present


# ----------------------------------------------------------------------------------------------- reading


def _read(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot load checkpoint {p} with weights_only=True: {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {p}: top level is {type(obj).__name__}, expected a dict")
    return dict(obj)


def _expected(module_cls, config) -> OrderedDict[str, torch.Tensor]:
    """Key -> meta tensor (shape and dtype) of the architecture, in state_dict order."""
    with torch.device("meta"):
        return module_cls(config).state_dict()


def _check_state_dict(
    got: Mapping[str, object],
    expected: Mapping[str, torch.Tensor],
    *,
    prefix: str,
    what: str,
    fill: Mapping[str, torch.Tensor] | None = None,
) -> OrderedDict[str, torch.Tensor]:
    """Compare `got` (keys carry `prefix`) with `expected`; return prefix-stripped tensors in expected order.

    `fill` supplies values for keys that may be absent (the constant kernels).
    """
    fill = fill or {}
    present = {k[len(prefix) :]: v for k, v in got.items() if k.startswith(prefix)}
    missing = [k for k in expected if k not in present and k not in fill]
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise CheckpointError(f"{what}: missing key '{prefix}{missing[0]}'{more}")
    unexpected = [k for k in present if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more unexpected)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{what}: unexpected key '{prefix}{unexpected[0]}'{more}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, ref in expected.items():
        v = present.get(k, fill.get(k))
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{what}: '{prefix}{k}' is a {type(v).__name__}, expected a tensor")
        if tuple(v.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{what}: '{prefix}{k}' has shape {list(v.shape)}, expected {list(ref.shape)}"
            )
        if ref.dtype.is_floating_point:
            if not v.dtype.is_floating_point:
                raise CheckpointError(f"{what}: '{prefix}{k}' has dtype {v.dtype}, expected floating point")
        elif v.dtype.is_floating_point or v.dtype.is_complex:
            raise CheckpointError(f"{what}: '{prefix}{k}' has dtype {v.dtype}, expected {ref.dtype}")
        out[k] = v.to(ref.dtype)
    return out


def _kernel_fill(expected: Mapping[str, torch.Tensor], config: GeneratorConfig) -> dict[str, torch.Tensor]:
    k = make_blur_kernel(config.blur_kernel, 4.0)  # (4, 4), /16 for [1,3,3,1]
    return {key: k for key in expected if key.endswith(_KERNEL_SUFFIXES)}


def _build(module_cls, config, state: Mapping[str, torch.Tensor], device: torch.device) -> nn.Module:
    """Instantiate on the meta device and adopt copies of the checked tensors (no random init).

    The copies detach the weights from the memory-mapped file, so replacing the file later cannot
    invalidate a loaded model.
    """
    with torch.device("meta"):
        module = module_cls(config)
    moved = {k: v.to(device=device, copy=True) for k, v in state.items()}
    module.load_state_dict(moved, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def _random_config(ckpt: Mapping, part: str, default, cls):
    spec = ckpt.get(_CONFIG_KEY)
    if not isinstance(spec, Mapping) or part not in spec:
        return default
    fields = dict(spec[part])
    for name, value in list(fields.items()):
        if isinstance(value, list):
            fields[name] = tuple(value)
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"bad {_CONFIG_KEY}[{part!r}]: {e}") from e


def _latent_avg_rows(value: object, n_latent: int, dim: int, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
        raise CheckpointError(f"{what}: 'latent_avg' must be a float tensor")
    shape = tuple(value.shape)
    if shape not in ((dim,), (n_latent, dim), (1, n_latent, dim)):
        raise CheckpointError(
            f"{what}: 'latent_avg' has shape {list(shape)}, expected [{dim}], [{n_latent}, {dim}] or [1, {n_latent}, {dim}]"
        )
    return value.to(torch.float32).reshape(-1, dim).expand(n_latent, dim).clone()  # (18, 512)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------------------- loaders


def load_psp(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = "cpu",
    encoder: bool = True,
    decoder: bool = True,
    encoder_config: EncoderConfig | None = None,
    generator_config: GeneratorConfig | None = None,
) -> LoadedPsp:
    """Load `psp_ffhq_encode.pt`: {'state_dict': {encoder.*, decoder.*}, 'opts', 'latent_avg'}.

    Both halves are always key-checked; only the requested ones are built.
    """
    what = f"pSp checkpoint {Path(path).name}"
    ckpt = _read(path)
    sd = ckpt.get("state_dict")
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{what}: no 'state_dict' dict at the top level (keys: {sorted(ckpt)[:8]})")
    ecfg = encoder_config or _random_config(ckpt, "encoder", OFFICIAL_ENCODER, EncoderConfig)
    gcfg = generator_config or _random_config(ckpt, "generator", OFFICIAL_GENERATOR, GeneratorConfig)
    if gcfg.n_latent != ecfg.n_styles or gcfg.style_dim != ecfg.style_dim:
        raise CheckpointError(f"{what}: encoder gives {ecfg.n_styles} styles but the decoder takes {gcfg.n_latent}")
    strays = [k for k in sd if not (k.startswith("encoder.") or k.startswith("decoder."))]
    if strays:
        raise CheckpointError(f"{what}: unexpected key '{strays[0]}' (neither encoder.* nor decoder.*)")
    e_exp = _expected(GradualStyleEncoder, ecfg)
    e_state = _check_state_dict(sd, e_exp, prefix="encoder.", what=what)
    g_exp = _expected(Generator, gcfg)
    g_state = _check_state_dict(sd, g_exp, prefix="decoder.", what=what, fill=_kernel_fill(g_exp, gcfg))
    if "latent_avg" not in ckpt:
        raise CheckpointError(f"{what}: no 'latent_avg' (the ffhq_encode model starts from the average latent)")
    latent_avg = _latent_avg_rows(ckpt["latent_avg"], ecfg.n_styles, ecfg.style_dim, what)
    opts = ckpt.get("opts")
    opts = dict(opts) if isinstance(opts, Mapping) else {}
    dev = _device(device)
    return LoadedPsp(
        encoder=_build(GradualStyleEncoder, ecfg, e_state, dev) if encoder else None,
        generator=_build(Generator, gcfg, g_state, dev) if decoder else None,
        latent_avg=latent_avg.to(dev),
        opts=opts,
    )


def load_stylegan2(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = "cpu",
    config: GeneratorConfig | None = None,
) -> LoadedStyleGAN2:
    """Load rosinality's `stylegan2-ffhq-config-f.pt`: {'g_ema': state_dict, 'latent_avg' (optional), ...}."""
    what = f"StyleGAN2 checkpoint {Path(path).name}"
    ckpt = _read(path)
    sd = ckpt.get("g_ema")
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{what}: no 'g_ema' dict at the top level (keys: {sorted(ckpt)[:8]})")
    gcfg = config or _random_config(ckpt, "generator", OFFICIAL_GENERATOR, GeneratorConfig)
    g_exp = _expected(Generator, gcfg)
    g_state = _check_state_dict(sd, g_exp, prefix="", what=what, fill=_kernel_fill(g_exp, gcfg))
    latent_avg = None
    if ckpt.get("latent_avg") is not None:
        latent_avg = _latent_avg_rows(ckpt["latent_avg"], gcfg.n_latent, gcfg.style_dim, what)[0]  # (512,)
    dev = _device(device)
    return LoadedStyleGAN2(generator=_build(Generator, gcfg, g_state, dev), latent_avg=latent_avg)


def load_generator(
    path: str | os.PathLike, *, device: str | torch.device | None = "cpu", config: GeneratorConfig | None = None
) -> Generator:
    """Generator from either file format; a pSp file's decoder.* weights (with their noise) are used as is."""
    ckpt_kind = _sniff(path)
    if ckpt_kind == "psp":
        return load_psp(path, device=device, encoder=False, generator_config=config).generator
    return load_stylegan2(path, device=device, config=config).generator


def _sniff(path: str | os.PathLike) -> str:
    ckpt = _read(path)
    if isinstance(ckpt.get("state_dict"), Mapping):
        return "psp"
    if isinstance(ckpt.get("g_ema"), Mapping):
        return "stylegan2"
    raise CheckpointError(f"{Path(path).name}: neither a pSp ('state_dict') nor a rosinality ('g_ema') checkpoint")


def encoder_id(path: str | os.PathLike, name: str = PSP_MODEL_NAME) -> str:
    """'<name>:sha256:<first 16 hex of the file's SHA-256>', streamed in 1 MiB chunks."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{name}:sha256:{h.hexdigest()[:16]}"


# ----------------------------------------------------------------------------------------------- writers


def _randomize(module: nn.Module, gen: torch.Generator) -> OrderedDict[str, torch.Tensor]:
    """Seeded random values for every state_dict entry, chosen per layer type so activations stay finite."""
    from . import psp as P
    from . import stylegan2 as S

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    values: dict[str, torch.Tensor] = {}
    for name, m in module.named_modules():
        pre = f"{name}." if name else ""
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            values[pre + "weight"] = 1 + 0.1 * randn(c)
            values[pre + "bias"] = 0.1 * randn(c)
            values[pre + "running_mean"] = 0.1 * randn(c)
            values[pre + "running_var"] = 0.5 + torch.rand(c, generator=gen)
            values[pre + "num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)
        elif isinstance(m, nn.PReLU):
            values[pre + "weight"] = 0.25 + 0.05 * randn(m.num_parameters)
        elif isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            values[pre + "weight"] = randn(*m.weight.shape) / math.sqrt(fan_in)
            if m.bias is not None:
                values[pre + "bias"] = 0.01 * randn(m.out_channels)
        elif isinstance(m, P.EqualLinear):
            values[pre + "weight"] = randn(*m.weight.shape)
            values[pre + "bias"] = 0.01 * randn(m.bias.shape[0])
        elif isinstance(m, S.EqualLinear):
            values[pre + "weight"] = randn(*m.weight.shape) / m.lr_mul
            base = 1.0 if name.endswith("modulation") else 0.0
            values[pre + "bias"] = base + 0.1 * randn(m.bias.shape[0])
        elif isinstance(m, S.ModulatedConv2d):
            values[pre + "weight"] = randn(*m.weight.shape)
        elif isinstance(m, S.NoiseInjection):
            values[pre + "weight"] = 0.1 * randn(1)
        elif isinstance(m, S.FusedLeakyReLU):
            values[pre + "bias"] = 0.1 * randn(m.bias.shape[0])
        elif isinstance(m, S.ToRGB):
            values[pre + "bias"] = 0.1 * randn(1, 3, 1, 1)
        elif isinstance(m, S.ConstantInput):
            values[pre + "input"] = randn(*m.input.shape)
        elif name == "noises":
            for bname, b in m.named_buffers(recurse=False):
                values[pre + bname] = randn(*b.shape)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, ref in module.state_dict().items():
        v = values.get(key)
        if v is None and key.endswith(_KERNEL_SUFFIXES):
            v = make_blur_kernel(module.config.blur_kernel, 4.0)
        if v is None or tuple(v.shape) != tuple(ref.shape):
            raise AssertionError(f"random writer does not cover {key}")  # a bug here, not bad input
        out[key] = v.to(ref.dtype).contiguous()
    return out


def _random_generator_state(config: GeneratorConfig, gen: torch.Generator) -> OrderedDict[str, torch.Tensor]:
    with torch.device("meta"):
        g = Generator(config)
    return _randomize(g, gen)


def save_random_psp_checkpoint(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    small: bool = False,
    encoder_config: EncoderConfig | None = None,
    generator_config: GeneratorConfig | None = None,
) -> Path:
    """Write random weights in the layout of `psp_ffhq_encode.pt`. Plumbing and loading only, not quality.

    small=True uses SMALL_ENCODER / SMALL_GENERATOR (still 256x256 in, (B, 18, 512) codes, 1024x1024 out).
    The full-size file is about 1.2 GB.
    """
    ecfg = encoder_config or (SMALL_ENCODER if small else OFFICIAL_ENCODER)
    gcfg = generator_config or (SMALL_GENERATOR if small else OFFICIAL_GENERATOR)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.device("meta"):
        enc = GradualStyleEncoder(ecfg)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in _randomize(enc, gen).items():
        state["encoder." + k] = v
    for k, v in _random_generator_state(gcfg, gen).items():
        state["decoder." + k] = v
    ckpt = {
        "state_dict": state,
        "opts": {
            "encoder_type": "GradualStyleEncoder",
            "input_nc": 3,
            "label_nc": 0,
            "dataset_type": "ffhq_encode",
            "start_from_latent_avg": True,
            "learn_in_w": False,
            "output_size": gcfg.size,
            "device": "cpu",
            "facekeys_note": "random weights: plumbing and loading only, not quality",
        },
        "latent_avg": 0.1 * torch.randn(1, DIM, generator=gen).expand(N_LAYERS, DIM).clone(),  # (18, 512)
    }
    if (ecfg, gcfg) != (OFFICIAL_ENCODER, OFFICIAL_GENERATOR):
        ckpt[_CONFIG_KEY] = {"encoder": asdict(ecfg), "generator": asdict(gcfg)}
    p = Path(path)
    torch.save(ckpt, p)
    return p


def save_random_stylegan2_checkpoint(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    small: bool = False,
    config: GeneratorConfig | None = None,
    with_latent_avg: bool = True,
) -> Path:
    """Write random weights in the layout of rosinality's `stylegan2-ffhq-config-f.pt` ({'g_ema', 'latent_avg'}).

    Plumbing and loading only, not quality.
    """
    gcfg = config or (SMALL_GENERATOR if small else OFFICIAL_GENERATOR)
    gen = torch.Generator().manual_seed(int(seed))
    ckpt: dict[str, object] = {"g_ema": _random_generator_state(gcfg, gen)}
    if with_latent_avg:
        ckpt["latent_avg"] = 0.1 * torch.randn(gcfg.style_dim, generator=gen)  # (512,)
    if gcfg != OFFICIAL_GENERATOR:
        ckpt[_CONFIG_KEY] = {"generator": asdict(gcfg)}
    p = Path(path)
    torch.save(ckpt, p)
    return p

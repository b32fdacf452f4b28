"""facekeys.models: pSp encoder and StyleGAN2 generator (pure PyTorch), checked checkpoint loading, alignment.

Public API (imported lazily, so `facekeys.models.align` works without importing torch):
    FaceEncoder, FaceGenerator               numpy in/out wrappers (api.py)
    align_face                               FFHQ-style 5-landmark alignment to 256x256 (align.py)
    load_psp, load_stylegan2, load_generator, encoder_id, CheckpointError,
    save_random_psp_checkpoint, save_random_stylegan2_checkpoint          (checkpoint.py)
    Generator, GeneratorConfig, GradualStyleEncoder, EncoderConfig        (stylegan2.py, psp.py)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FaceEncoder": "api",
    "FaceGenerator": "api",
    "align_face": "align",
    "load_psp": "checkpoint",
    "load_stylegan2": "checkpoint",
    "load_generator": "checkpoint",
    "encoder_id": "checkpoint",
    "CheckpointError": "checkpoint",
    "save_random_psp_checkpoint": "checkpoint",
    "save_random_stylegan2_checkpoint": "checkpoint",
    "Generator": "stylegan2",
    "GeneratorConfig": "stylegan2",
    "GradualStyleEncoder": "psp",
    "EncoderConfig": "psp",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facekeys.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

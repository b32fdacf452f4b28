"""Shared fixtures for the model tests.

All weights here are random: they prove plumbing and checkpoint loading, never output quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facekeys.models.checkpoint import save_random_psp_checkpoint, save_random_stylegan2_checkpoint
from facekeys.models.psp import SMALL_ENCODER
from facekeys.models.stylegan2 import GeneratorConfig

DATA = Path(__file__).parent / "data"

# 32x32 output, 8 W+ rows of width 512: the smallest generator with every kind of layer.
TINY_GEN = GeneratorConfig(size=32, channel_multiplier=1, channels=(32, 32, 16, 16))
# pSp needs 18 W+ rows, i.e. a 1024 generator: keep it very thin.
TINY_PSP_GEN = GeneratorConfig(channels=(8, 8, 8, 8, 8, 4, 4, 4, 4))


@pytest.fixture(scope="session")
def tiny_gen_config() -> GeneratorConfig:
    return TINY_GEN


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))


def spec_entries(name: str) -> list[dict]:
    return json.loads((DATA / name).read_text())["state_dict"]


@pytest.fixture(scope="session")
def psp_keys() -> list[dict]:
    return spec_entries("psp_ffhq_encode.keys.json")


@pytest.fixture(scope="session")
def g_keys() -> list[dict]:
    return spec_entries("stylegan2_ffhq_config_f.keys.json")


@pytest.fixture(scope="session")
def tiny_psp_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "psp_tiny.pt"
    return save_random_psp_checkpoint(path, seed=7, encoder_config=SMALL_ENCODER, generator_config=TINY_PSP_GEN)


@pytest.fixture(scope="session")
def tiny_sg2_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "sg2_tiny.pt"
    return save_random_stylegan2_checkpoint(path, seed=11, config=TINY_GEN)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)

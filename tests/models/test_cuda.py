"""The models on a CUDA device agree with the pure-PyTorch CPU path (runs only where CUDA exists: the lent GPU
machine via benchmarks/device/gpu_checks.sh; skipped on CPU-only CI).

Random weights in the official checkpoint layout, full size: this proves the GPU path computes what the CPU path
computes and that CUDA is picked by default; not output quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekeys.models import FaceEncoder, FaceGenerator
from facekeys.models.checkpoint import save_random_psp_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def psp_path(tmp_path_factory):
    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    torch.backends.cudnn.allow_tf32 = False
    return save_random_psp_checkpoint(tmp_path_factory.mktemp("cuda") / "psp_ffhq_encode.pt", seed=3)


def test_cuda_is_the_default_device(psp_path):
    assert FaceEncoder(psp_path).device.type == "cuda"
    assert FaceGenerator(psp_path).device.type == "cuda"


def test_encoder_cuda_equals_cpu(psp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 256, 256, 3), dtype=np.uint8)
    cpu = FaceEncoder(psp_path, device="cpu").encode(images)  # (3, 18, 512)
    gpu = FaceEncoder(psp_path, device="cuda").encode(images)
    scale = np.abs(cpu).max()
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4 * scale)
    assert not np.allclose(cpu[0], cpu[1])  # different faces, different keys


def test_generator_cuda_equals_cpu(psp_path):
    latents = np.random.default_rng(1).standard_normal((2, 18, 512)).astype(np.float32)
    cpu = FaceGenerator(psp_path, device="cpu").generate(latents).astype(np.int16)  # (2, 1024, 1024, 3)
    gpu = FaceGenerator(psp_path, device="cuda").generate(latents).astype(np.int16)
    diff = np.abs(gpu - cpu)
    assert diff.max() <= 2 and diff.mean() < 0.05  # rounding of float32 differences to uint8 levels
    assert cpu.std() > 0 and not np.array_equal(cpu[0], cpu[1])


def test_fast_paths_on_cuda_equal_cpu_reference(psp_path):
    """impl="fast" on CUDA (the eager, non-oneDNN branch of facekeys.models.fast) against the CPU reference."""
    latents = np.random.default_rng(2).standard_normal((2, 18, 512)).astype(np.float32)
    cpu = FaceGenerator(psp_path, device="cpu", impl="reference").generate(latents).astype(np.int16)
    gpu = FaceGenerator(psp_path, device="cuda", impl="fast").generate(latents).astype(np.int16)
    diff = np.abs(gpu - cpu)
    assert diff.max() <= 2 and diff.mean() < 0.05
    images = np.random.default_rng(3).integers(0, 256, size=(2, 256, 256, 3), dtype=np.uint8)
    ref = torch.from_numpy(FaceEncoder(psp_path, device="cpu", impl="reference").encode(images))
    fast = torch.from_numpy(FaceEncoder(psp_path, device="cuda", impl="fast").encode(images))
    assert torch.nn.functional.cosine_similarity(fast, ref, dim=2).min().item() >= 0.9999

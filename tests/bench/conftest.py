"""Hand-built recall cases shared by the bench tests (fixture `hand_data`)."""

from __future__ import annotations

import numpy as np
import pytest

from facekeys.bench.recall import RecallData


def e(i: int) -> np.ndarray:
    v = np.zeros(512, np.float32)
    v[i] = 1.0
    return v


def hand_case():
    """3 identities. Layer 1 (W+ 0) of probe B points at A; layer 18 (W+ 17) is right for everyone.

    So high:1 gets A and C right (2/3) and low:1 gets all three (3/3), for cosine and for L2.
    One impostor is orthogonal to everything on both layers.
    """
    gallery = np.zeros((3, 18, 512), np.float32)
    for i in range(3):
        gallery[i, 0] = e(i)
        gallery[i, 17] = e(i)
    probes = np.zeros((3, 18, 512), np.float32)
    probes[0, 0], probes[0, 17] = e(0) + 0.1 * e(5), e(0)  # A
    probes[1, 0], probes[1, 17] = 0.9 * e(0) + 0.1 * e(1), e(1)  # B: layer 1 looks like A
    probes[2, 0], probes[2, 17] = e(2), e(2) + 0.1 * e(6)  # C
    impostor = np.zeros((1, 18, 512), np.float32)
    impostor[0, 0] = impostor[0, 17] = e(3)
    return RecallData.build(gallery, np.array(["A", "B", "C"]), probes, np.array(["A", "B", "C"]), impostor)


@pytest.fixture
def hand_data() -> RecallData:
    return hand_case()

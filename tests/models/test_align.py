"""5-landmark FFHQ-style alignment: output format, input validation, geometric consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from facekeys.errors import InvalidArgument
from facekeys.models.align import align_face

LM = np.array([[350.0, 260.0], [450.0, 260.0], [400.0, 320.0], [362.0, 372.0], [438.0, 372.0]])


def _scene(h=640, w=800) -> np.ndarray:
    """A smooth, non-symmetric test picture (no face needed for geometry checks)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 120 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    g = 127 + 120 * np.sin((xx + 2 * yy) / 41.0)
    b = 255 * (xx / w)
    return np.stack([r, g, b], axis=-1).round().clip(0, 255).astype(np.uint8)


def test_output_format():
    out = align_face(_scene(), LM)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8


def test_landmarks_land_at_canonical_places():
    """Dots drawn at the landmarks end up where the FFHQ square puts them, whatever the input pose."""
    outs = []
    for angle, scale, shift in [(0.0, 1.0, (0, 0)), (25.0, 1.6, (40, -30)), (-15.0, 0.7, (-60, 20))]:
        img = np.zeros((900, 1000, 3), np.uint8)
        c = np.array([400.0, 320.0])
        a = math.radians(angle)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        lm = (LM - c) @ rot.T * scale + c + np.array(shift) + [100, 100]
        for (x, y), colour in zip(lm[[0, 1, 3, 4]], [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
            yy, xx = np.ogrid[:900, :1000]
            img[(xx - x) ** 2 + (yy - y) ** 2 <= (6 * scale) ** 2] = colour
        out = align_face(img, lm).astype(float)
        centres = []
        for ch in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]:
            m = np.all(np.abs(out - ch) < 90, axis=-1) & (out.sum(-1) > 150)
            ys, xs = np.nonzero(m)
            centres.append((xs.mean(), ys.mean()))
        outs.append(np.array(centres))
    for o in outs[1:]:
        assert np.abs(o - outs[0]).max() < 3.0  # pixels in the 256 crop
    # eyes level and left of right; mouth below the eyes
    left_eye, right_eye, mouth_l, mouth_r = outs[0]
    assert abs(left_eye[1] - right_eye[1]) < 1.5 and left_eye[0] < right_eye[0] and mouth_l[1] > left_eye[1] + 30


def test_translation_invariance():
    img = _scene()
    a = align_face(img[40:, 30:], LM - [30, 40]).astype(int)
    b = align_face(img, LM).astype(int)
    assert np.abs(a - b).mean() < 1.0


def test_face_near_the_border_is_padded():
    img = _scene()
    lm = LM - [330, 240]  # eyes near the top-left corner: quad leaves the image
    out = align_face(img, lm)
    assert out.shape == (256, 256, 3)
    assert out.std() > 5  # reflected and blurred content, not a black frame


def test_large_face_is_shrunk_first():
    img = np.array(Image.fromarray(_scene()).resize((3200, 2560)))
    out = align_face(img, LM * 4)
    ref = align_face(_scene(), LM)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 12


@pytest.mark.parametrize(
    "image,landmarks",
    [
        (np.zeros((100, 100), np.uint8), LM),
        (np.zeros((100, 100, 4), np.uint8), LM),
        (np.zeros((100, 100, 3), np.float32), LM),
        (np.zeros((100, 100, 3), np.uint8), LM[:4]),
        (np.zeros((100, 100, 3), np.uint8), np.full((5, 2), np.nan)),
        (np.zeros((100, 100, 3), np.uint8), np.full((5, 2), 10.0)),  # degenerate
        (np.zeros((100, 100, 3), np.uint8), LM + 5000),  # face outside the image
    ],
)
def test_rejects_bad_input(image, landmarks):
    with pytest.raises(InvalidArgument):
        align_face(image, landmarks)

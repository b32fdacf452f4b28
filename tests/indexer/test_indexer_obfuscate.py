import numpy as np
import pytest

from facekeys.errors import InvalidArgument
from facekeys.indexer.obfuscate import ObfuscationConfig, expand_box, obfuscate
from indexer_media import astronaut_head, detail


def frame():
    img = np.zeros((240, 320, 3), np.uint8)
    img[20:240, 100:280] = astronaut_head()
    return img


@pytest.mark.parametrize("method", ["mosaic", "blur", "fill"])
def test_obfuscates_inside_only(method):
    src = frame()
    out = obfuscate(src.copy(), [(140, 60, 88, 120)], ObfuscationConfig(method=method, margin=0.2))
    x0, y0, x1, y1 = expand_box((140, 60, 88, 120), 0.2, 320, 240)
    assert (x0, y0, x1, y1) == (122, 36, 246, 204)
    inside = np.zeros((240, 320), bool)
    inside[y0:y1, x0:x1] = True
    assert np.array_equal(out[~inside], src[~inside])
    if method == "mosaic":  # piecewise constant: a handful of colours where there were thousands
        face = out[60:180, 140:228].reshape(-1, 3)
        assert len(np.unique(face, axis=0)) <= 8 * 8 < len(np.unique(src[60:180, 140:228].reshape(-1, 3), axis=0)) / 10
    else:
        assert detail(out, (140, 60, 88, 120)) < 0.2 * detail(src, (140, 60, 88, 120))


def test_mosaic_block_count():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    obfuscate(img, [(40, 40, 120, 120)], ObfuscationConfig(margin=0.0, mosaic_blocks=6))
    row = img[100, 40:160, 0]
    assert len(np.unique(row)) <= 6


def test_small_faces_get_larger_blocks():
    """A ~26 px face in 6 blocks of ~4 px still looks like a face to CenterFace; 8 px blocks do not."""
    import cv2

    head = cv2.resize(astronaut_head(), (40, 49), interpolation=cv2.INTER_AREA)  # face ~ 20x27 px
    img = np.full((96, 128, 3), 120, np.uint8)
    img[20:69, 40:80] = head
    img = cv2.resize(img, (256, 192), interpolation=cv2.INTER_LINEAR)  # face ~ 40x54 px: detectable
    img = cv2.resize(img, (128, 96), interpolation=cv2.INTER_AREA)
    box = (40 + 9, 20 + 11, 20, 27)
    out = obfuscate(img.copy(), [box], ObfuscationConfig())
    x0, y0, x1, y1 = expand_box(box, 0.2, 128, 96)
    row = out[(y0 + y1) // 2, x0:x1, 0]
    assert len(np.unique(row)) <= int(np.ceil((x1 - x0) / 8)) + 1  # blocks of >= 8 px
    fine = obfuscate(img.copy(), [box], ObfuscationConfig(mosaic_min_block=1))
    assert len(np.unique(fine[(y0 + y1) // 2, x0:x1, 0])) > len(np.unique(row))
    with pytest.raises(InvalidArgument):
        ObfuscationConfig(mosaic_min_block=0)


def test_boxes_clipped_at_border_and_track_tuples():
    img = np.full((50, 60, 3), 200, np.uint8)
    img[::2] = 0
    obfuscate(img, [(7, -10, -5, 40, 30), (3, 50, 30, 40, 40)], ObfuscationConfig(method="fill", fill_color=(1, 2, 3)))
    assert (img[0, 0] == [1, 2, 3]).all() and (img[49, 59] == [1, 2, 3]).all()


@pytest.mark.parametrize("kw", [dict(method="pixelate"), dict(margin=-0.1), dict(mosaic_blocks=1), dict(fill_color=(0, 0, 300))])
def test_bad_obfuscation_config(kw):
    with pytest.raises(InvalidArgument):
        ObfuscationConfig(**kw)


def test_mosaic_noise_moves_block_colours_reproducibly():
    img = frame()
    plain = obfuscate(img.copy(), [(140, 60, 88, 120)], ObfuscationConfig(mosaic_noise=0))
    noisy = obfuscate(img.copy(), [(140, 60, 88, 120)], ObfuscationConfig(mosaic_noise=20))
    again = obfuscate(img.copy(), [(140, 60, 88, 120)], ObfuscationConfig(mosaic_noise=20))
    d = noisy.astype(int) - plain.astype(int)
    assert np.array_equal(noisy, again) and d.any() and np.abs(d).max() <= 20
    with pytest.raises(InvalidArgument):
        ObfuscationConfig(mosaic_noise=200)

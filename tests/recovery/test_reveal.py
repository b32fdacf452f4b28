"""The reveal compositor and video round trip, without gRPC: geometry, feathering, and a reveal of one
identity in a short lossless video that changes pixels only inside that identity's regions.

The generator is a small random-init pSp decoder (plumbing only: what it draws is not a face)."""

from __future__ import annotations

import numpy as np
import pytest

from facekeys.errors import InvalidArgument, Unavailable
from facekeys.recovery.reveal import PlacementConfig, face_patch, feather_mask, paste, region, reveal_video
from facekeys.recovery.video import OutputVideoConfig


def test_region_is_the_indexers_obfuscated_rectangle():
    obfuscate = pytest.importorskip("facekeys.indexer.obfuscate")
    rng = np.random.default_rng(0)
    for _ in range(300):
        box = (rng.uniform(-20, 150), rng.uniform(-20, 110), rng.uniform(1, 80), rng.uniform(1, 80))
        m = rng.uniform(0, 1)
        assert region(box, m, 160, 120) == obfuscate.expand_box(box, m, 160, 120)


def test_face_patch_maps_the_detector_box_onto_face_region():
    S = 200
    face = np.zeros((S, S, 3), np.uint8)
    face[...] = (0, 0, 255)  # outside the face region: blue
    face[40:160, 60:140] = (255, 0, 0)  # face_region (0.3, 0.2, 0.7, 0.8): red
    placement = PlacementConfig(margin=0.25, face_region=(0.3, 0.2, 0.7, 0.8), feather=0.0)
    box = (50, 40, 40, 60)  # x, y, w, h
    rect = region(box, placement.margin, 400, 300)
    assert rect == (40, 25, 100, 115)
    patch = face_patch(face, box, rect, placement.face_region)  # (90, 60, 3)
    assert patch.shape == (90, 60, 3)
    inner = patch[15 + 2:15 + 60 - 2, 10 + 2:10 + 40 - 2]  # the box, less a resampling pixel each side
    assert (inner == (255, 0, 0)).all()
    assert (patch[:13] == (0, 0, 255)).all() and (patch[:, :8] == (0, 0, 255)).all()  # the margin: outside


def test_face_patch_when_the_margin_leaves_the_generated_square():
    face = np.full((64, 64, 3), 77, np.uint8)
    rect = region((10, 10, 20, 20), 2.0, 100, 100)
    patch = face_patch(face, (10, 10, 20, 20), rect, (0.0, 0.0, 1.0, 1.0))  # edge-padded, no error
    assert patch.shape == (rect[3] - rect[1], rect[2] - rect[0], 3) and (patch == 77).all()


def test_feather_mask_ramps_inside_and_not_along_the_frame_border():
    a = feather_mask((0, 0, 40, 20), 100, 100, 0.25, (False, False, False, False))[..., 0]  # ramp 5 px
    assert a.shape == (20, 40) and a.max() == 1.0 and 0 < a.min() < 0.11
    assert a[10, 20] == 1.0 and a[0, 20] == pytest.approx(0.1) and a[10, 0] == pytest.approx(0.1)
    a = feather_mask((0, 0, 40, 20), 100, 100, 0.25, (True, False, False, False))[..., 0]  # cut on the left
    assert a[10, 0] == 1.0 and a[10, 39] == pytest.approx(0.1)
    assert (feather_mask((0, 0, 40, 20), 100, 100, 0.0, (False,) * 4) == 1.0).all()


def test_paste_writes_only_the_region():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    before = frame.copy()
    face = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    placement = PlacementConfig()
    box = (30, 20, 40, 50)
    assert paste(frame, face, box, placement)
    x0, y0, x1, y1 = region(box, placement.margin, 160, 120)
    outside = np.ones((120, 160), bool)
    outside[y0:y1, x0:x1] = False
    assert (frame[outside] == before[outside]).all()
    changed = (frame != before).any(-1)[y0:y1, x0:x1]
    assert changed.mean() > 0.9
    # where alpha is 1 (the middle), the pixels are exactly the mapped patch
    patch = face_patch(face, box, (x0, y0, x1, y1), placement.face_region)
    cy, cx = (y1 - y0) // 2, (x1 - x0) // 2
    np.testing.assert_array_equal(frame[y0 + cy - 5:y0 + cy + 5, x0 + cx - 5:x0 + cx + 5],
                                  patch[cy - 5:cy + 5, cx - 5:cx + 5])
    assert not paste(frame, face, (500, 500, 10, 10), placement)  # off the frame: nothing


def test_placement_config_is_checked():
    for kw in ({"margin": -0.1}, {"feather": 0.9}, {"face_region": (0.5, 0.2, 0.4, 0.8)}):
        with pytest.raises(InvalidArgument):
            PlacementConfig(**kw)
    with pytest.raises(InvalidArgument):
        OutputVideoConfig(codec="mjpeg")


def _outside(shape, rows, margin):
    """Mask (H, W) of pixels outside every region of these box rows."""
    mask = np.ones(shape[:2], bool)
    for row in rows:
        x0, y0, x1, y1 = region(row, margin, shape[1], shape[0])
        mask[y0:y1, x0:x1] = False
    return mask


@pytest.mark.parametrize("codec", ["h264-lossless", "ffv1"])
def test_reveal_changes_only_that_identitys_regions(tmp_path, vid, source_video, generator, codec):
    faces = {1: generator.generate(np.random.default_rng(3).standard_normal((1, 18, 512)).astype(np.float32),
                                   output_size=256)[0]}  # (256, 256, 3): one generator pass for the key
    a = vid.boxes_a()
    out = tmp_path / ("revealed" + OutputVideoConfig(codec).suffix)
    stats = reveal_video(source_video, out, faces, {1: a}, PlacementConfig(), OutputVideoConfig(codec))
    assert (stats.frames, stats.frames_changed, stats.boxes_revealed, stats.boxes_skipped) == (12, 11, 11, 1)
    assert not out.with_name(out.name + ".partial").exists()

    src, src_pts, src_tb, src_audio, _ = vid.read(source_video)
    got, pts, tb, n_audio, audio = vid.read(out)
    assert len(got) == len(src) == 12
    assert [p * tb for p in pts] == [p * src_tb for p in src_pts]  # every timestamp kept
    assert audio == "aac" and n_audio == src_audio  # audio packets carried over
    m = PlacementConfig().margin
    b_mask = ~_outside(src[0].shape, vid.boxes_b(), m)
    for f, (s, g) in enumerate(zip(src, got)):
        rows = a[a[:, 0] == f]
        outside = _outside(s.shape, rows, m)
        np.testing.assert_array_equal(g[outside], s[outside], err_msg=f"frame {f}: a pixel outside A changed")
        np.testing.assert_array_equal(g[b_mask], s[b_mask], err_msg=f"frame {f}: B's region changed")
        if len(rows):
            inside = ~outside
            assert (g[inside] != s[inside]).any(-1).mean() > 0.8, f"frame {f}: A's region was not revealed"
        else:
            np.testing.assert_array_equal(g, s)


def test_reveal_without_audio_and_h264_lossy(tmp_path, vid):
    yy, xx = np.mgrid[:vid.H, :vid.W]
    frames = [np.stack([xx + 10 * f, yy * 2, xx + yy], -1).clip(0, 255).astype(np.uint8) for f in range(4)]  # smooth
    src = vid.write(tmp_path / "noaudio.mp4", frames, vid.PTS[:4], audio=False)
    face = np.full((256, 256, 3), 128, np.uint8)
    out = tmp_path / "out.mp4"
    stats = reveal_video(src, out, {7: face}, {7: vid.boxes_a()}, output=OutputVideoConfig("h264", crf=10))
    got, pts, *_, audio = vid.read(out)
    assert stats.frames == 4 and audio is None and pts == vid.PTS[:4]
    outside = _outside(frames[3].shape, vid.boxes_a()[3:4], PlacementConfig().margin)
    assert np.abs(got[3].astype(int) - frames[3])[outside].mean() < 3  # lossy 4:2:0, but the same picture


def test_a_failed_reveal_leaves_no_output(tmp_path, vid, source_video):
    out = tmp_path / "out.mp4"
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Unavailable, match="cancelled"):
        reveal_video(source_video, out, {1: np.zeros((64, 64, 3), np.uint8)}, {1: vid.boxes_a()},
                     cancelled=cancelled)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidArgument):
        reveal_video(tmp_path / "missing.mp4", out, {}, {})
    with pytest.raises(InvalidArgument, match="no face"):
        reveal_video(source_video, out, {}, {1: vid.boxes_a()})

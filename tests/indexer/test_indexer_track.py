import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facekeys.errors import InvalidArgument
from facekeys.indexer.detect import Detection
from facekeys.indexer.track import Tracker, TrackerConfig, frontalness

IMG = np.full((240, 320, 3), 128, np.uint8)
LM = np.array([[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]], np.float32)


def det(x, y, w=30, h=36, score=0.9):
    return Detection(float(x), float(y), float(w), float(h), score, LM + [x, y])


def run(seq, cfg):
    """seq[i] = detections of frame i. Returns (tracks, per-frame popped boxes) respecting the look-ahead."""
    tr = Tracker(cfg)
    tracks, popped = [], {}
    for i, dets in enumerate(seq):
        tracks += tr.update(i, i / 25, IMG, dets)
        f = i - tr.lookahead
        if f >= 0:
            popped[f] = tr.pop_boxes(f)
    tracks += tr.finish()
    for f in range(max(0, len(seq) - tr.lookahead), len(seq)):
        popped[f] = tr.pop_boxes(f)
    return tracks, popped


def test_interpolates_missed_detections():
    seq = [[det(10 + 5 * i, 50)] if i not in (4, 5, 6) else [] for i in range(12)]
    tracks, popped = run(seq, TrackerConfig(max_gap=3, hold=0))
    assert len(tracks) == 1
    t = tracks[0]
    assert [b[0] for b in t.boxes] == list(range(12))
    assert t.detected == tuple(i not in (4, 5, 6) for i in range(12))
    assert [b[1] for b in t.boxes] == [10 + 5 * i for i in range(12)]  # linear
    assert all(len(popped[f]) == 1 for f in range(12))
    assert t.timestamps == pytest.approx([i / 25 for i in range(12)])


def test_gap_longer_than_max_gap_splits_track():
    seq = [[det(50, 50)] if i not in (3, 4, 5) else [] for i in range(10)]
    tracks, popped = run(seq, TrackerConfig(max_gap=2, hold=0, min_hits=1))
    assert len(tracks) == 2
    assert [len(popped[f]) for f in range(10)] == [1, 1, 1, 0, 0, 0, 1, 1, 1, 1]


def test_hold_before_and_after():
    seq = [[det(50, 50)] if 3 <= i <= 5 else [] for i in range(12)]
    tracks, popped = run(seq, TrackerConfig(max_gap=3, hold=2))
    assert [b[0] for b in tracks[0].boxes] == [1, 2, 3, 4, 5, 6, 7]
    assert [len(popped[f]) for f in range(12)] == [0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]


def test_two_faces_crossing_keep_identities():
    seq = [[det(20 + 10 * i, 40), det(200 - 10 * i, 150)] for i in range(16)]
    tracks, _ = run(seq, TrackerConfig())
    assert len(tracks) == 2
    for t in tracks:
        ys = {b[2] for b in t.boxes}
        assert len(ys) == 1  # never swapped between the two rows


def test_min_hits_drops_short_tracks_but_still_obfuscates():
    seq = [[det(50, 50)]] + [[] for _ in range(8)]
    tracks, popped = run(seq, TrackerConfig(min_hits=2, hold=0))
    assert tracks == [] and popped[0] == [(0, 50, 50, 30, 36)]


def test_best_crop_prefers_sharp_frontal_large():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    tr = Tracker(TrackerConfig())
    tr.update(0, 0.0, IMG, [det(50, 50)])  # flat image: zero sharpness
    tr.update(1, 0.04, sharp, [det(52, 50)])
    profile = Detection(54.0, 50.0, 30.0, 36.0, 0.9, np.array([[10, 10], [20, 10], [22, 15], [11, 20], [19, 20]], np.float32) + [54, 50])
    tr.update(2, 0.08, sharp, [profile])
    (t,) = tr.finish()
    assert t.best_frame == 1
    assert t.best_crop.shape == (72, 72, 3)  # 2x the larger box side
    np.testing.assert_allclose(t.best_landmarks + [52 + 15 - 36, 50 + 18 - 36], LM + [52, 50])
    assert frontalness(LM) == pytest.approx(1.0) and frontalness(profile.landmarks) == 0.0


def test_update_requires_consecutive_frames():
    tr = Tracker()
    tr.update(0, 0.0, IMG, [])
    with pytest.raises(InvalidArgument):
        tr.update(2, 0.1, IMG, [])


def test_pop_before_final_is_refused():
    tr = Tracker(TrackerConfig(max_gap=3))
    tr.update(0, 0.0, IMG, [det(1, 1)])
    with pytest.raises(InvalidArgument):
        tr.pop_boxes(0)


@pytest.mark.parametrize("kw", [dict(max_gap=-1), dict(hold=5, max_gap=2), dict(iou_threshold=0), dict(min_hits=0), dict(crop_scale=9)])
def test_bad_tracker_config(kw):
    with pytest.raises(InvalidArgument):
        TrackerConfig(**kw)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=2, max_size=40), st.integers(0, 5))
def test_no_unobfuscated_frame_between_detections(seen, max_gap):
    """Property: for one face, every frame between two detections at most max_gap+1 apart is covered,
    and the boxes popped under the look-ahead rule equal the track's own boxes."""
    seq = [[det(40 + i, 60)] if s else [] for i, s in enumerate(seen)]
    tracks, popped = run(seq, TrackerConfig(max_gap=max_gap, hold=0, min_hits=1))
    covered = {f for f, boxes in popped.items() if boxes}
    hits = [i for i, s in enumerate(seen) if s]
    for a, b in zip(hits, hits[1:]):
        if b - a <= max_gap + 1:
            assert set(range(a, b + 1)) <= covered
    assert covered == {b[0] for t in tracks for b in t.boxes}

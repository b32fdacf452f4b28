import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facekeys.errors import InvalidArgument
from facekeys.indexer.detect import Detection
from facekeys.indexer.shots import CutDetector, ShotConfig, find_cuts
from facekeys.indexer.track import Tracker, TrackerConfig, crop_descriptor, frontalness

IMG = np.full((240, 320, 3), 128, np.uint8)
LM = np.array([[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]], np.float32)


def det(x, y, w=30, h=36, score=0.9):
    return Detection(float(x), float(y), float(w), float(h), score, LM + [x, y])


def run(seq, cfg, images=None, **kw):
    """seq[i] = detections of frame i (images[i] its frame, default IMG). Returns (tracks, per-frame popped
    boxes) respecting the look-ahead."""
    tr = Tracker(cfg, **kw)
    tracks, popped = [], {}
    for i, dets in enumerate(seq):
        tracks += tr.update(i, i / 25, IMG if images is None else images[i], dets)
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


def test_held_boxes_also_follow_the_motion():
    """A face the detector finds only in frames 3-5, moving 10 px a frame: the frames held before and after
    are obfuscated where it stood (the held box) and where its motion says it was (it may be too faint to detect
    there); the key keeps only the held boxes."""
    seq = [[det(50 + 10 * (i - 3), 50)] if 3 <= i <= 5 else [] for i in range(12)]
    tracks, popped = run(seq, TrackerConfig(max_gap=3, hold=2))
    assert [b[:2] for b in tracks[0].boxes] == [(1, 50), (2, 50), (3, 50), (4, 60), (5, 70), (6, 70), (7, 70)]
    assert sorted(b[1] for b in popped[1]) == [30, 50] and sorted(b[1] for b in popped[2]) == [40, 50]
    assert sorted(b[1] for b in popped[6]) == [70, 80] and sorted(b[1] for b in popped[7]) == [70, 90]


def test_a_small_face_is_obfuscated_wider_before_its_first_detection():
    """A 10 px face found once: the two frames before also get boxes grown by 1 and 2 face sizes a side
    (obfuscation only: the key keeps the held box)."""
    seq = [[det(100, 100, 10, 10)] if i == 4 else [] for i in range(12)]
    tracks, popped = run(seq, TrackerConfig(max_gap=3, hold=2, min_hits=1))
    assert sorted(popped[3]) == [(0, 90, 90, 30, 30), (0, 100, 100, 10, 10)]
    assert sorted(popped[2]) == [(0, 80, 80, 50, 50), (0, 100, 100, 10, 10)]
    assert [b[0] for b in tracks[0].boxes] == [2, 3, 4, 5, 6]
    _, big = run([[det(100, 100, 40, 40)] if i == 4 else [] for i in range(12)], TrackerConfig(max_gap=3, hold=2))
    assert big[3] == [(0, 100, 100, 40, 40)]  # larger faces: the held box only


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


@pytest.mark.parametrize("kw", [dict(max_gap=-1), dict(hold=5, max_gap=2), dict(iou_threshold=0), dict(min_hits=0), dict(crop_scale=9),
                                dict(max_speed=0), dict(max_scale=1.0), dict(appearance=0), dict(appearance=3), dict(cuts=0.1)])
def test_bad_tracker_config(kw):
    with pytest.raises(InvalidArgument):
        TrackerConfig(**kw)


@pytest.mark.parametrize("kw", [dict(threshold=0), dict(threshold=1), dict(ratio=0.5), dict(window=0), dict(gradual_window=1),
                                dict(gradual_window=500), dict(gradual_coherence=0), dict(gradual_spread=1.5)])
def test_bad_shot_config(kw):
    with pytest.raises(InvalidArgument):
        ShotConfig(**kw)


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


# -- purity: cuts, motion gates, appearance, occlusion -----------------------------------------------------


@pytest.fixture(scope="module")
def people():
    """Two real faces (Obama, Biden: the face_recognition photos, cropped to CenterFace's box on them)."""
    import realmedia

    fr = realmedia.face_recognition_images()
    a = realmedia.read_rgb(fr["obama.jpg"])[107 : 107 + 310, 374 : 374 + 228]
    b = realmedia.read_rgb(fr["biden.jpg"])[172 : 172 + 379, 432 : 432 + 267]
    return a, b


def paste(faces, bg=IMG):
    """A frame: bg with each (face image, x, y, w, h) resized into its box, in order (later ones in front)."""
    img = bg.copy()
    for face, x, y, w, h in faces:
        img[y : y + h, x : x + w] = cv2.resize(face, (w, h), interpolation=cv2.INTER_AREA)
    return img


def backgrounds():
    from skimage.data import chelsea, coffee

    return tuple(cv2.resize(im(), (320, 240), interpolation=cv2.INTER_AREA) for im in (coffee, chelsea))


def keys_of(tracks):
    return [[b[0] for b in t.boxes] for t in sorted(tracks, key=lambda t: t.first_frame)]


def covered(popped):
    return {f for f, boxes in popped.items() if boxes}


def test_cut_ends_every_track(people):
    """Same face, same box, new background at frame 10: a cut. No key crosses it; every frame is obfuscated."""
    bg1, bg2 = backgrounds()
    images = [paste([(people[0], 100, 60, 60, 72)], bg1 if i < 10 else bg2) for i in range(20)]
    assert find_cuts(images) == [10]
    seq = [[det(100, 60, 60, 72)] for _ in range(20)]
    tracks, popped = run(seq, TrackerConfig(), images)
    assert keys_of(tracks) == [list(range(0, 10)), list(range(10, 20))]
    assert covered(popped) == set(range(20))


def test_cut_ends_tracks_without_holding_keys_across_it(people):
    """Face missed for 2 frames before a cut: the gap is still obfuscated (held/bridged), but no key box lies
    on the other side of the cut, neither held forward nor held back."""
    bg1, bg2 = backgrounds()
    images = [paste([(people[i >= 10], 100, 60, 60, 72)], bg1 if i < 10 else bg2) for i in range(20)]
    seq = [[det(100, 60, 60, 72)] if i not in (8, 9) else [] for i in range(20)]
    tracks, popped = run(seq, TrackerConfig(hold=2), images)
    assert keys_of(tracks) == [list(range(0, 10)), list(range(10, 20))]
    assert covered(popped) == set(range(20))


def test_dissolve_is_dated_back_and_its_blends_are_in_no_key(people):
    """Cross-fade (no hard cut) from A on one background to B on another, same box, over frames 8..17: one
    shot change, dated back to frame 8; A's key stops before it, B's key starts where the blend is >= 70% B
    (frame 15); every frame obfuscated."""
    bg1, bg2 = backgrounds()
    a, b = paste([(people[0], 100, 60, 60, 72)], bg1), paste([(people[1], 100, 60, 60, 72)], bg2)
    images = [cv2.addWeighted(a, 1 - w, b, w, 0.0) for w in np.clip((np.arange(26) - 7) / 11, 0, 1)]  # B's weight
    det_ = CutDetector()
    found = [(i, det_.shot_start) for i, im in enumerate(images) if det_.update(im)]
    assert [s for _, s in found] == [8] and found[0][0] > 8  # found a few frames in, dated back
    seq = [[det(100, 60, 60, 72)] for _ in range(26)]
    tracks, popped = run(seq, TrackerConfig(), images)
    (ka, kb) = keys_of(tracks)
    weight_b = np.clip((np.arange(26) - 7) / 11, 0, 1)
    assert ka == list(range(0, 8)) and weight_b[kb[0]] >= 0.7 and kb == list(range(kb[0], 26))
    assert covered(popped) == set(range(26))
    assert find_cuts(images, ShotConfig(gradual_window=0)) == []  # hard cuts only: no change found


@pytest.mark.parametrize("fade", [30, 40, 60])
def test_slow_dissolve_is_found_and_a_lost_track_is_trimmed_late(people, fade):
    """A slow cross-fade (1.2-2.4 s): A's face is lost early in it (last seen at frame 9, so its track can no
    longer be bridged after frame 16), the transition is found later, B's face is found near its end. A's key
    still stops at the first blended frame: a track is handed back only once no transition found later can be
    dated back into it."""
    bg1, bg2 = backgrounds()
    a, b = paste([(people[0], 100, 60, 60, 72)], bg1), paste([(people[1], 100, 60, 60, 72)], bg2)
    n = 8 + fade + 8
    weight_b = np.clip((np.arange(n) - 7) / (fade + 1), 0, 1)
    images = [cv2.addWeighted(a, 1 - w, b, w, 0.0) for w in weight_b]
    det_ = CutDetector()
    found = [(i, det_.shot_start) for i, im in enumerate(images) if det_.update(im)]
    assert [s for _, s in found] == [8] and found[0][0] > 16  # found after A's track ended
    seq = [[det(100, 60, 60, 72)] if i < 10 or i >= 8 + fade else [] for i in range(n)]
    tracks, _ = run(seq, TrackerConfig(), images)
    ka, kb = keys_of(tracks)
    assert ka == list(range(0, 8)) and weight_b[kb[0]] >= 0.7


def test_far_jump_is_refused():
    """A small face and, one frame later, a face 2.5x its size at the same centre (Megamind's cut 97 -> 98:
    a background face, then a close-up): no face grows that fast. Two tracks; both obfuscated throughout."""
    seq = [[det(100, 100, 30, 36)] for _ in range(5)] + [[det(100 + 15 - 37.5, 100 + 18 - 45, 75, 90)] for _ in range(5)]
    tracks, popped = run(seq, TrackerConfig(hold=0))
    assert keys_of(tracks) == [list(range(0, 5)), list(range(5, 10))]
    assert covered(popped) == set(range(10))


def test_far_jump_in_one_frame_is_refused():
    """The speed gate is on the distance from the last detection over the time between, not on the motion
    prediction: with max_speed at 5 face sizes/s, a detection 1.5 sizes away 4 frames (0.16 s) later starts
    its own track even where a noisy prediction (a 12 px glitch) reaches it."""
    xs = [100, 100, 100, 100, 112]  # a 12 px glitch makes the predicted box run ahead
    seq = [[det(x, 100)] for x in xs] + [[], [], [], [det(112 + 4 * 12 + 2, 100)]]
    cfg = TrackerConfig(hold=0, min_hits=1, max_speed=5.0)
    tracks, _ = run(seq, cfg)
    assert len(tracks) == 1 + 1  # the far detection starts its own track
    assert max(len(k) for k in keys_of(tracks)) == 5


def test_appearance_change_at_the_same_place_splits(people):
    """Another person at exactly the same box (IoU 1) with no cut (only the face changes): two keys; the
    frames are obfuscated all along."""
    images = [paste([(people[i >= 8], 100, 60, 60, 72)]) for i in range(16)]
    assert find_cuts(images) == []
    seq = [[det(100, 60, 60, 72)] for _ in range(16)]
    tracks, popped = run(seq, TrackerConfig(), images)
    assert keys_of(tracks) == [list(range(0, 8)), list(range(8, 16))]
    assert covered(popped) == set(range(16))
    assert [t.detected.count(True) for t in sorted(tracks, key=lambda t: t.first_frame)] == [8, 8]


def test_refused_link_is_still_bridged_for_obfuscation(people):
    """Person A missed for 5 frames, then person B where A was: the keys stay apart, but the frames between
    are obfuscated as if they were one face (the privacy rule does not depend on the appearance gate)."""
    images = [paste([(people[i >= 8], 100, 60, 60, 72)]) for i in range(14)]
    seq = [[det(100, 60, 60, 72)] if i < 3 or i >= 8 else [] for i in range(14)]
    tracks, popped = run(seq, TrackerConfig(hold=0, max_gap=6), images)
    assert keys_of(tracks) == [[0, 1, 2], list(range(8, 14))]
    assert covered(popped) == set(range(14))


def test_ambiguous_motion_does_not_swap_identities(people):
    """Two people walk towards each other, both are missed for three frames while they meet, and each turns
    back. Constant-velocity prediction pairs each track with the other person; appearance keeps them apart."""
    ax = [60, 70, 80, 90, 100]  # Obama walks right ...
    bx = [200, 190, 180, 170, 160]  # ... Biden walks left
    frames = [(ax[i], bx[i]) for i in range(5)] + [None] * 3 + [(110 - 5 * k, 150 + 5 * k) for k in range(6)]
    images, seq = [], []
    for fr in frames:
        if fr is None:
            images.append(IMG), seq.append([])
            continue
        images.append(paste([(people[0], fr[0], 60, 50, 60), (people[1], fr[1], 60, 50, 60)]))
        seq.append([det(fr[0], 60, 50, 60), det(fr[1], 60, 50, 60)])
    tracks, _ = run(seq, TrackerConfig(hold=0), images)
    for t in tracks:
        xs = [b[1] for b, d in zip(t.boxes, t.detected) if d]
        assert all(x < 130 for x in xs) or all(x > 130 for x in xs), xs  # one person: stays on its side


def test_occluded_box_stays_out_of_the_key(people):
    """A passes behind B (A undetected while covered): A's interpolated boxes there are obfuscated but kept
    out of A's key, which would otherwise paint A's face over B."""
    images, seq, hidden = [], [], []
    for i in range(12):
        ax = 40 + 20 * i
        images.append(paste([(people[0], ax, 60, 50, 60), (people[1], 131, 55, 60, 72)]))
        if 81 < ax < 191:  # A's box meets B's: A is (partly) behind B, the detector misses it
            hidden.append(i)
        seq.append(([] if i in hidden else [det(ax, 60, 50, 60)]) + [det(131, 55, 60, 72)])
    assert hidden == [3, 4, 5, 6, 7]
    tracks, popped = run(seq, TrackerConfig(hold=0), images)
    a, b = sorted(tracks, key=lambda t: t.boxes[0][1])
    assert [f for f, d in zip(keys_of([a])[0], a.detected) if d] == [i for i in range(12) if i not in hidden]  # one track
    assert not set(keys_of([a])[0]) & set(hidden)
    for f in hidden:  # still drawn: A's interpolated box and B's
        assert sorted(tid for tid, *_ in popped[f]) == sorted([a.track_id, b.track_id])


def test_describe_replaces_the_crop_descriptor():
    """A caller's identity descriptor decides appearance (here: who each detection is, as a one-hot row)."""
    who = [0] * 5 + [1] * 5
    calls = iter(who)

    def describe(image, dets):
        return np.eye(2, dtype=np.float32)[[next(calls) for _ in dets]]  # (N, 2)

    seq = [[det(50, 50)] for _ in range(10)]
    tracks, _ = run(seq, TrackerConfig(hold=0), describe=describe)
    assert keys_of(tracks) == [list(range(5)), list(range(5, 10))]
    with pytest.raises(InvalidArgument):
        Tracker(describe=lambda image, dets: np.zeros((len(dets) + 1, 4), np.float32)).update(0, 0.0, IMG, [det(1, 1)])


def test_crop_descriptor_is_unit_length_and_flat_crops_carry_no_evidence(people):
    img = paste([(people[0], 100, 60, 60, 72)])
    d = crop_descriptor(img, [det(100, 60, 60, 72), det(250, 150, 30, 36)])  # a face; a flat gray patch
    assert d.shape == (2, 192) and d.dtype == np.float32
    assert np.linalg.norm(d[0]) == pytest.approx(1.0, abs=1e-5) and not d[1].any()


def test_cut_detector_ignores_a_pan_but_not_a_cut():
    """A pan speeding up to 16 px/frame over a 320 px frame changes every pixel and is still one shot."""
    from skimage.data import astronaut, coffee

    a = astronaut()  # (512, 512, 3)
    xs = np.cumsum([0, 0, 0, 1, 2, 4, 6, 8, 10, 12, 14, 16, 16, 16, 16, 16])
    pan = [np.ascontiguousarray(a[100:340, x : x + 320]) for x in xs]
    other = cv2.resize(coffee(), (320, 240), interpolation=cv2.INTER_AREA)
    assert find_cuts(pan) == []
    still = pan + [pan[-1]] * 8  # the pan ends; a cut out of a still shot
    assert find_cuts(still + [other, other]) == [len(still)]
    det_ = CutDetector()
    assert det_.update(pan[0]) is False  # the first frame never starts a "new" shot

"""Obfuscation strength measured on real footage: the indexer end to end (default settings), then
`facekeys.indexer.privacy.verify_video` on its output, at the levels the defaults are chosen for:

- no CenterFace hit at >= 0.3 and no dlib HOG / MMOD CNN hit inside an obfuscated region;
- no leaked frame (a face of the original, CenterFace >= 0.4 or dlib HOG, still found in the output);
- re-identification no better than chance: with dlib's 128-D descriptor, an obfuscated face's nearest
  person (mean original descriptor of each person in the clip) is right no more often than a one-sided
  binomial test at chance (1 / people) allows at 1 % (probes treated as independent: stricter than 1 %).

And the verifier can fail: on the original itself, and on HEAD's weaker mosaic on a small face.
Clips (tests/indexer/privacy_clips.py, 60 frames each): a downscaled messi5 (14-19 px face), a small crowd
from t1.jpg (six 19-35 px faces), vtest.avi (surveillance, ~10 px faces), Megamind.avi (two large faces).
"""

import json

import numpy as np
import pytest

pytest.importorskip("dlib")

import privacy_clips  # noqa: E402

from facekeys.errors import InvalidArgument  # noqa: E402
from facekeys.indexer.obfuscate import ObfuscationConfig  # noqa: E402
from facekeys.indexer.pipeline import obfuscate_video  # noqa: E402
from facekeys.indexer.privacy import (  # noqa: E402
    ReidResult,
    VerifyConfig,
    binomial_sf,
    read_keys_jsonl,
    tracks_to_boxes,
    verify_video,
)

pytestmark = pytest.mark.slow

HEAD_MOSAIC = ObfuscationConfig(margin=0.2, mosaic_blocks=6, mosaic_min_block=8)  # the defaults before this check


@pytest.fixture(scope="module")
def identity():
    from facekeys.identity import load

    return load()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return tmp_path_factory.mktemp("privacy")


def _index(media, name, cfg=ObfuscationConfig()):
    src = privacy_clips.build(name, media)
    dst = media / f"{name}-obf-{abs(hash(cfg))}.mp4"
    tracks = obfuscate_video(src, dst, obfuscation_cfg=cfg)
    return src, dst, tracks


@pytest.fixture(scope="module", params=privacy_clips.CLIPS)
def verified(request, media, identity):
    src, dst, tracks = _index(media, request.param)
    report = verify_video(src, dst, VerifyConfig(), identity=identity)
    return request.param, src, dst, tracks, report


def test_no_detector_hits_in_regions(verified):
    name, _, _, tracks, r = verified
    assert r.frames == 60 and r.tracks >= 1 and r.region_boxes > 0, name
    assert r.region_hit_count("centerface") == 0, (name, r.region_hits)
    assert r.region_hit_count("hog") == 0 and r.region_hit_count("cnn") == 0, (name, r.region_hits)
    assert r.max_region_score < VerifyConfig().centerface_threshold
    assert r.centerface_hits_at(0.3) == (0, 0) and r.centerface_hits_at(0.5) == (0, 0)


def test_no_leaked_frames(verified):
    name, _, _, _, r = verified
    assert r.reference_faces >= r.frames // 3, name  # the originals do show faces
    assert r.leaked_frames == [], (name, r.leaks[:5])


def test_reidentification_at_chance(verified):
    name, _, _, _, r = verified
    reid = r.reid
    assert reid is not None and reid.probes > 0, name
    assert reid.probes % reid.people == 0  # as many probes per person: chance is 1 / people
    assert not reid.better_than_chance, (name, reid)
    assert reid.correct <= reid.allowed
    assert not [f for f in r.failures() if "re-identif" in f], r.failures()


def test_verifier_fails_on_the_original(media, identity):
    """Judging the unobfuscated video: every face is a region hit and a leak, and the matcher re-identifies."""
    src = privacy_clips.build("crowd", media)
    r = verify_video(src, src, VerifyConfig(cnn_every=30), identity=identity)
    assert r.region_hit_count("centerface", 0.5) >= r.region_boxes * 0.8
    assert r.region_hit_count("cnn") > 0
    assert len(r.leaked_frames) == r.frames
    assert r.reid.people >= 5 and r.reid.better_than_chance and r.reid.rate > 0.8
    fails = r.failures()
    assert not r.passed and len(fails) == 5, fails  # CenterFace, HOG (on upscaled crops), CNN, leaks, re-identification
    for what in ("CenterFace", "HOG", "CNN", "leaked frame", "re-identification"):
        assert sum(what in f for f in fails) == 1, (what, fails)
    big = privacy_clips.build("megamind", media)
    assert verify_video(big, big, VerifyConfig(cnn_every=0, reid_per_track=0), identity=identity).region_hit_count("hog") > 0


def test_verifier_fails_heads_mosaic_on_a_small_face(media, identity):
    """HEAD's 6-block mosaic with 20 % margin still fires CenterFace >= 0.3 on the 14-19 px messi face."""
    src, dst, _ = _index(media, "messi", HEAD_MOSAIC)
    r = verify_video(src, dst, VerifyConfig(margin=HEAD_MOSAIC.margin, cnn_every=0, reid_per_track=0), identity=identity)
    assert r.region_hit_count("centerface") > 0 and r.leaked_frames
    at = [r.centerface_hits_at(t)[0] for t in (0.2, 0.3, 0.4, 0.5)]  # reported at every level
    assert at[1] == r.region_hit_count("centerface") and at == sorted(at, reverse=True)
    assert not r.passed and any("CenterFace" in f for f in r.failures())


def test_keys_file_gives_the_same_regions(media, identity, tmp_path):
    """Regions read from key records (`facekeys get` lines) are the keys' boxes; regions recomputed from the
    original are those plus the boxes obfuscated outside any key (held along a small face's motion)."""
    src, dst, tracks = _index(media, "crowd")
    keys = tmp_path / "keys.jsonl"
    keys.write_text("".join(json.dumps({"key_id": i, "track_id": str(t.track_id), "boxes": [list(b) for b in t.boxes]}) + "\n"
                            for i, t in enumerate(tracks)))
    given = read_keys_jsonl(keys)
    assert sorted(len(v) for v in given.values()) == sorted(len(t.boxes) for t in tracks)
    cfg = VerifyConfig(hog=False, cnn_every=0, reid_per_track=0)
    a = verify_video(src, dst, cfg, tracks=given, identity=identity)
    b = verify_video(src, dst, cfg, identity=identity)
    assert a.region_boxes == sum(len(t.boxes) for t in tracks) <= b.region_boxes  # no short tracks on this clip
    assert a.passed and b.passed
    assert tracks_to_boxes(tracks).keys() == {t.track_id for t in tracks}


def test_cli(media, tmp_path, capsys):
    from facekeys.cli import main

    src, dst, _ = _index(media, "messi")
    fast = ["--no-hog", "--cnn-every", "0", "--reid-per-track", "0"]
    assert main(["verify-video", str(src), str(dst), *fast]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["verify-video", str(src), str(src), *fast, "--json"]) == 1
    out, err = capsys.readouterr()
    rep = json.loads(out)
    assert rep["passed"] is False and rep["region_hits"] and rep["leaked_frames"]
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("facekeys: verify-video: FAIL: ") for ln in lines)
    assert main(["verify-video", str(src), str(tmp_path / "nope.mp4")]) == 1
    assert capsys.readouterr().err.startswith("facekeys: error: ")
    for argv in ([str(src)], [str(src), str(dst), "--centerface-threshold", "1.5"]):  # usage, bad value: one line
        assert main(["verify-video", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("facekeys: error: ") and len(err.strip().splitlines()) == 1, err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"track_id": 1}\n')
    assert main(["verify-video", str(src), str(dst), "--keys", str(bad)]) == 1
    assert "boxes" in capsys.readouterr().err


def test_videos_must_correspond(media, identity):
    a = privacy_clips.build("messi", media)
    b = privacy_clips.build("grace", media)
    with pytest.raises(InvalidArgument, match="frame 0"):
        verify_video(a, b, VerifyConfig(hog=False, cnn_every=0, reid_per_track=0), identity=identity)


def test_binomial_rule():
    from math import comb

    for n, p in ((10, 0.5), (47, 1 / 6), (171, 1 / 7)):
        for k in (0, 1, n // 4, n // 2, n):
            exact = sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
            assert binomial_sf(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-300)
    r = ReidResult(probes=48, correct=0, people=6, chance=1 / 6, p_value=1.0, original_probes=0, original_correct=0, alpha=0.01)
    # the most correct answers chance explains at 1 %: 8 expected, 14 still allowed, 15 is re-identification
    assert r.allowed == 14
    assert binomial_sf(14, 48, 1 / 6) >= 0.01 > binomial_sf(15, 48, 1 / 6)
    one = ReidResult(probes=8, correct=8, people=1, chance=1.0, p_value=1.0, original_probes=0, original_correct=0, alpha=0.01)
    assert not one.better_than_chance  # one person: nothing to tell apart


@pytest.mark.parametrize("kw", [dict(centerface_threshold=0.0), dict(observe_threshold=0.5), dict(margin=-1),
                                dict(crop_face_px=4), dict(cnn_every=-1), dict(alpha=1.0)])
def test_bad_verify_config(kw):
    with pytest.raises(InvalidArgument):
        VerifyConfig(**kw)


def test_keys_file_errors(tmp_path):
    p = tmp_path / "k.jsonl"
    for text in ("not json\n", '{"boxes": [[1, 2, 3]]}\n', "\n"):
        p.write_text(text)
        with pytest.raises(InvalidArgument):
            read_keys_jsonl(p)
    with pytest.raises(InvalidArgument, match="cannot read"):
        read_keys_jsonl(tmp_path / "missing.jsonl")
    p.write_text('{"boxes": [[0, 1, 2, 3, 4]]}\n{"track_id": "a", "boxes": [[1, 1, 2, 3, 4]]}\n{"track_id": "a", "boxes": []}\n')
    assert read_keys_jsonl(p) == {0: [(0, 1, 2, 3, 4)], 1: [(1, 1, 2, 3, 4)]}
    assert np.asarray(read_keys_jsonl(p)[0]).shape == (1, 5)

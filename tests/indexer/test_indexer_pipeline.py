import av
import numpy as np
import pytest

from facekeys.errors import InvalidArgument
from facekeys.indexer.pipeline import DetectorConfig, ObfuscationConfig, TrackerConfig, obfuscate_video
from facekeys.indexer.video import VideoError
from indexer_media import FacePath, read_all, region_diff, render, write_video

N = 32
TWO_PEOPLE = [
    FacePath(x0=10, y0=10, x1=150, y1=40, s0=0.4, s1=0.6),  # walks right, comes closer
    FacePath(head="second", x0=250, y0=120, x1=170, y1=100, s0=0.45, s1=0.3, first=4, last=28),  # enters late, leaves early
]


class DropFrames:
    """Wraps a detector and loses every detection on some frames (a simulated miss)."""

    def __init__(self, inner, drop):
        self.inner, self.drop, self.i = inner, set(drop), -1

    def detect(self, image):
        self.i += 1
        return [] if self.i in self.drop else self.inner.detect(image)


def _check_obfuscated(src, dst, truth, leak_detector, min_diff=8.0):
    ins, tin = read_all(src)
    outs, tout = read_all(dst)
    assert len(outs) == len(ins) and tout == pytest.approx(tin, abs=1e-3)
    for i, (a, b) in enumerate(zip(ins, outs)):
        b = b[: a.shape[0], : a.shape[1]]
        for box in truth[i]:
            assert region_diff(a, b, box) > min_diff, f"frame {i}: face {box} not obfuscated"
        assert leak_detector.detect(np.ascontiguousarray(b)) == [], f"frame {i}: face visible in output"


@pytest.fixture(scope="module")
def two_people(tmp_path_factory):
    d = tmp_path_factory.mktemp("two")
    frames, truth = render(N, (320, 240), TWO_PEOPLE)
    write_video(d / "in.mp4", frames, audio="aac")
    return d / "in.mp4", truth


def test_every_face_frame_obfuscated(two_people, centerface, leak_detector, tmp_path):
    src, truth = two_people
    dst = tmp_path / "out.mp4"
    tracks = obfuscate_video(src, dst, centerface)
    _check_obfuscated(src, dst, truth, leak_detector)
    assert len(tracks) == 2
    t0, t1 = sorted(tracks, key=lambda t: t.first_frame)
    assert [b[0] for b in t0.boxes] == list(range(N))
    assert t1.first_frame <= 4 and t1.last_frame >= 28
    for t in tracks:
        frames = [b[0] for b in t.boxes]
        assert frames == list(range(frames[0], frames[-1] + 1))  # continuous
        assert len(t.timestamps) == len(t.boxes)
        assert t.best_crop.ndim == 3 and t.best_landmarks.shape == (5, 2)
        assert t.first_frame <= t.best_frame <= t.last_frame
    with av.open(str(dst)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}


def test_missed_detections_are_interpolated(two_people, centerface, leak_detector, tmp_path):
    src, truth = two_people
    dst = tmp_path / "out.mp4"
    drop = {10, 11, 12, 20}
    tracks = obfuscate_video(src, dst, DropFrames(centerface, drop), TrackerConfig(max_gap=4, hold=0))
    _check_obfuscated(src, dst, truth, leak_detector)
    assert len(tracks) == 2
    for t in tracks:
        undetected = {b[0] for b, d in zip(t.boxes, t.detected) if not d}
        assert drop <= undetected | set(range(0, t.first_frame)) | set(range(t.last_frame + 1, N))
        frames = [b[0] for b in t.boxes]
        assert frames == list(range(frames[0], frames[-1] + 1))


def test_without_lookahead_gap_the_miss_leaks(two_people, centerface, leak_detector, tmp_path):
    """Control for the test above: with max_gap=0 the dropped frames are left unobfuscated."""
    src, truth = two_people
    dst = tmp_path / "out.mp4"
    obfuscate_video(src, dst, DropFrames(centerface, {10, 11}), TrackerConfig(max_gap=0, hold=0))
    outs, _ = read_all(dst)
    assert leak_detector.detect(np.ascontiguousarray(outs[10][:240, :320])) != []


def test_vfr_odd_size_pcm_audio(centerface, leak_detector, tmp_path):
    pts = [0, 40, 80, 120, 300, 310, 320, 330, 700, 740, 780, 1200, 1240, 1280]
    frames, truth = render(len(pts), (321, 241), [FacePath(x0=40, x1=120, y0=30, y1=30)])
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mp4"
    write_video(src, frames, pts_ms=pts, codec="mpeg4", audio="pcm_s16le", fmt="matroska")
    tracks = obfuscate_video(src, dst, centerface, obfuscation_cfg=ObfuscationConfig(method="blur"))
    _check_obfuscated(src, dst, truth, leak_detector)
    assert len(tracks) == 1 and tracks[0].timestamps == pytest.approx([p / 1000 for p in pts], abs=1e-3)
    with av.open(str(dst)) as c:
        assert c.streams.video[0].codec_context.width == 322
        assert c.streams.audio[0].codec_context.name == "aac"


def test_bad_input_and_settings(tmp_path, centerface):
    src = tmp_path / "in.mp4"
    src.write_text("not a video")
    with pytest.raises(VideoError):
        obfuscate_video(src, tmp_path / "out.mp4", centerface)
    assert list(tmp_path.iterdir()) == [src]
    with pytest.raises(InvalidArgument):
        obfuscate_video(src, src, centerface)
    with pytest.raises(InvalidArgument):
        obfuscate_video(src, tmp_path / "o.mp4", object())
    with pytest.raises(InvalidArgument):
        obfuscate_video(src, tmp_path / "o.mp4", centerface, tracker_cfg={"max_gap": 3})


def test_failure_midway_leaves_no_output(two_people, centerface, tmp_path):
    src, _ = two_people

    class Boom:
        n = 0

        def detect(self, image):
            self.n += 1
            if self.n == 15:
                raise RuntimeError("detector crashed")
            return centerface.detect(image)

    with pytest.raises(RuntimeError):
        obfuscate_video(src, tmp_path / "out.mp4", Boom())
    assert list(tmp_path.iterdir()) == []


def test_detector_config_is_accepted(two_people, tmp_path):
    src, _ = two_people
    tracks = obfuscate_video(src, tmp_path / "o.mp4", DetectorConfig(upscale=0.75, threads=1))
    assert len(tracks) >= 1


@pytest.mark.slow
def test_real_photos_obama_biden(tmp_path, leak_detector, centerface):
    """Two real people from the face_recognition sdist (downloaded from PyPI once, cached)."""
    import cv2
    from indexer_media import face_recognition_images

    try:
        imgs = face_recognition_images(tmp_path.parent / "fr_cache")
    except Exception as e:  # no network and no cache
        pytest.skip(f"face_recognition sdist unavailable: {e}")
    a = cv2.resize(imgs["obama.jpg"], (200, 200 * imgs["obama.jpg"].shape[0] // imgs["obama.jpg"].shape[1]))
    b = cv2.resize(imgs["biden.jpg"], (200, 200 * imgs["biden.jpg"].shape[0] // imgs["biden.jpg"].shape[1]))
    frames = []
    for i in range(24):
        f = np.full((360, 640, 3), 90, np.uint8)
        ha, hb = min(a.shape[0], 360), min(b.shape[0], 360)
        f[:ha, 20 + 4 * i : 220 + 4 * i] = a[:ha]
        f[:hb, 420 - 3 * i : 620 - 3 * i] = b[:hb]
        frames.append(f)
    truth = [[(d.x, d.y, d.w, d.h) for d in centerface.detect(f)] for f in frames]
    assert all(len(t) == 2 for t in truth)
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(src, frames)
    tracks = obfuscate_video(src, dst, centerface)
    assert len(tracks) == 2
    _check_obfuscated(src, dst, truth, leak_detector)

"""Short real-footage clips for the privacy tests and benchmarks/bench_privacy.py (built on the fly from
tests/realmedia.py's packages; nothing is committed).

- `messi`: opencv-doc's messi5.jpg scaled to 0.40-0.55 (a 14-19 px face) with a slow pan and zoom;
- `crowd`: insightface's group photo t1.jpg scaled to 0.20-0.30 (six faces of 19-35 px), panning;
- `vtest`: opencv-doc's vtest.avi (surveillance, pedestrians with ~10 px faces), a stretch with faces;
- `megamind`: opencv-doc's Megamind.avi (animated, 70-260 px faces), a stretch with two faces;
- `people`: three different real people side by side (face_recognition's obama.jpg and biden.jpg, facedetect's
  Grace Hopper), 30-45 px faces, panning: a clip where the matcher does tell people apart on the originals;
- held out (checked after the defaults were chosen): `crowd-tiny` (t1.jpg at 0.14-0.20: 13-25 px faces),
  `crowd-mid` (t1.jpg at 0.40-0.55: 40-75 px), `grace` (Grace Hopper at 0.20-0.32: 37-59 px) and `obama`
  (face_recognition's obama2.jpg at 0.10-0.16: 27-43 px).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/realmedia.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # indexer_media

import realmedia  # noqa: E402
from indexer_media import write_video  # noqa: E402

CLIPS = ("messi", "crowd", "vtest", "megamind", "people")
HELD_OUT = ("crowd-tiny", "crowd-mid", "grace", "obama")  # not used to pick the defaults: their check


def _pan(img: np.ndarray, n: int, size: tuple[int, int], s0: float, s1: float, c0, c1) -> list[np.ndarray]:
    """n frames of `size` (w, h): img scaled from s0 to s1, the source point moving from c0 to c1 at the centre."""
    w, h = size
    out = []
    for i in range(n):
        a = i / max(1, n - 1)
        s = s0 + (s1 - s0) * a
        cx, cy = c0[0] + (c1[0] - c0[0]) * a, c0[1] + (c1[1] - c0[1]) * a
        m = np.array([[s, 0, w / 2 - s * cx], [0, s, h / 2 - s * cy]], np.float64)
        # the view stays inside the photo; REPLICATE (not REFLECT, which would mirror faces into view) at worst
        out.append(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE))
    return out


def _people_strip() -> np.ndarray:
    """Obama, Biden and Grace Hopper, each a 200x200 head-and-shoulders crop (face ~90 px), side by side."""
    fr = realmedia.face_recognition_images()
    # (photo, face box x, y, w, h as dlib's HOG finds it)
    heads = [(fr["obama.jpg"], (366, 136, 259, 259)), (fr["biden.jpg"], (439, 233, 311, 310)),
             (realmedia.facedetect_examples() / "grace_hopper_512x512.jpg", (161, 113, 216, 216))]
    tiles = []
    for path, (x, y, w, h) in heads:
        img = realmedia.read_rgb(path)
        side = int(2.2 * w)
        cx, cy = x + w // 2, y + h // 2 + w // 6
        m = np.array([[200 / side, 0, 100 - 200 / side * cx], [0, 200 / side, 100 - 200 / side * cy]])
        tiles.append(cv2.warpAffine(img, m, (200, 200), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE))
    return np.concatenate(tiles, axis=1)  # (200, 600, 3)


def _segment(path: Path, start: int, n: int) -> list[np.ndarray]:
    from facekeys.indexer.video import VideoReader

    frames = []
    with VideoReader(path) as r:
        for f in r.frames():
            if f.index >= start:
                frames.append(f.image)
            if len(frames) >= n:
                break
    return frames


def frames_for(name: str, n: int | None = None) -> list[np.ndarray]:
    """RGB frames of clip `name`; `n` frames (default: the test length; vtest/megamind: None = whole video)."""
    data = realmedia.opencv_doc_data()
    if name == "messi":
        img = realmedia.read_rgb(data / "messi5.jpg")  # face at (225, 93, 32, 42)
        return _pan(img, n or 60, (192, 128), 0.42, 0.55, (235, 155), (300, 180))
    if name == "crowd":
        img = realmedia.read_rgb(realmedia.insightface_images()["t1.jpg"])
        return _pan(img, n or 60, (256, 176), 0.22, 0.30, (610, 420), (670, 460))
    if name == "crowd-tiny":
        img = realmedia.read_rgb(realmedia.insightface_images()["t1.jpg"])
        return _pan(img, n or 60, (176, 120), 0.14, 0.20, (620, 430), (660, 450))
    if name == "crowd-mid":
        img = realmedia.read_rgb(realmedia.insightface_images()["t1.jpg"])
        return _pan(img, n or 60, (480, 320), 0.40, 0.55, (600, 400), (700, 430))
    if name == "grace":
        img = realmedia.read_rgb(realmedia.facedetect_examples() / "grace_hopper_512x512.jpg")
        return _pan(img, n or 60, (96, 96), 0.20, 0.32, (256, 230), (270, 250))
    if name == "obama":
        img = realmedia.read_rgb(realmedia.face_recognition_images()["obama2.jpg"])  # face ~270 px wide
        return _pan(img, n or 60, (96, 128), 0.10, 0.16, (330, 450), (320, 440))
    if name == "people":
        return _pan(_people_strip(), n or 60, (288, 112), 0.36, 0.48, (290, 100), (310, 105))
    if name == "vtest":
        return _segment(data / "vtest.avi", 340, n or 60)  # faces from frame ~350 on
    if name == "megamind":
        return _segment(data / "Megamind.avi", 30, n or 60)  # two faces around frames 30-90
    raise ValueError(f"unknown clip {name!r}; one of {CLIPS}")


def build(name: str, folder: Path, n: int | None = None) -> Path:
    """Encode clip `name` (H.264, crf 12) into folder/<name>.mp4 and return its path."""
    path = Path(folder) / f"{name}.mp4"
    if not path.exists():
        write_video(path, frames_for(name, n))
    return path


def full_video(name: str) -> Path:
    """The untouched source video for vtest / megamind (the benchmark runs on whole videos)."""
    data = realmedia.opencv_doc_data()
    return {"vtest": data / "vtest.avi", "megamind": data / "Megamind.avi"}[name]


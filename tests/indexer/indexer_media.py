"""Test media built on the fly: real faces (skimage's astronaut, optionally the face_recognition sdist's
Obama/Biden photos) pasted into short synthetic videos with known face boxes."""

from __future__ import annotations

import functools
import tarfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

# Astronaut (skimage.data.astronaut(), 512x512): head crop and the face box CenterFace finds inside it.
HEAD = (140, 10, 180, 220)  # x, y, w, h of the crop taken from the 512x512 image
FACE_IN_HEAD = (181 - 140, 58 - 10, 88, 120)  # x, y, w, h of the face inside that crop


@functools.lru_cache(maxsize=None)
def astronaut_head() -> np.ndarray:
    from skimage.data import astronaut

    x, y, w, h = HEAD
    return np.ascontiguousarray(astronaut()[y : y + h, x : x + w])  # (220, 180, 3) uint8 RGB


def second_head() -> np.ndarray:
    """A second, different-looking person: the astronaut mirrored with a shifted skin/colour balance."""
    head = astronaut_head()[:, ::-1].astype(np.int16)
    head = head[..., [0, 2, 1]] * 0.6 + head * 0.4  # swap G/B partly
    return np.clip(head, 0, 255).astype(np.uint8)


def background(h: int, w: int, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([60 + 80 * xx / w, 90 + 60 * yy / h, 120 + 0 * xx], -1)
    rng = np.random.default_rng(seed)
    bg = bg + rng.normal(0, 4, bg.shape)
    return np.clip(bg, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class FacePath:
    """A head moving linearly from (x0, y0) at scale s0 to (x1, y1) at s1 over frames [first, last]."""

    head: str = "astronaut"  # "astronaut" | "second"
    x0: float = 20
    y0: float = 20
    x1: float = 120
    y1: float = 40
    s0: float = 0.45
    s1: float = 0.55
    first: int = 0
    last: int = 10**9


def render(n: int, size: tuple[int, int], faces: list[FacePath]) -> tuple[list[np.ndarray], list[list[tuple]]]:
    """n frames (H, W, 3) uint8 RGB of `size` (w, h); per frame the true face boxes (x, y, w, h)."""
    w, h = size
    bg = background(h, w)
    frames, truth = [], []
    for i in range(n):
        img = bg.copy()
        boxes = []
        for fp in faces:
            if not fp.first <= i <= fp.last:
                continue
            a = (i - fp.first) / max(1, min(n - 1, fp.last) - fp.first)
            s = fp.s0 + (fp.s1 - fp.s0) * a
            x, y = fp.x0 + (fp.x1 - fp.x0) * a, fp.y0 + (fp.y1 - fp.y0) * a
            src = astronaut_head() if fp.head == "astronaut" else second_head()
            hw, hh = max(2, round(src.shape[1] * s)), max(2, round(src.shape[0] * s))
            patch = cv2.resize(src, (hw, hh), interpolation=cv2.INTER_AREA)
            xi, yi = int(round(x)), int(round(y))
            x0c, y0c = max(0, xi), max(0, yi)
            x1c, y1c = min(w, xi + hw), min(h, yi + hh)
            if x1c <= x0c or y1c <= y0c:
                continue
            img[y0c:y1c, x0c:x1c] = patch[y0c - yi : y1c - yi, x0c - xi : x1c - xi]
            fx, fy, fw, fh = FACE_IN_HEAD
            boxes.append((xi + fx * s, yi + fy * s, fw * s, fh * s))
        frames.append(img)
        truth.append(boxes)
    return frames, truth


def write_video(
    path: Path,
    frames: list[np.ndarray],
    pts_ms: list[int] | None = None,
    codec: str = "libx264",
    audio: str | None = None,
    fmt: str | None = None,
) -> None:
    """Encode RGB frames at millisecond pts (default 25 fps); optional audio (a 440 Hz tone) in `audio` codec."""
    h, w = frames[0].shape[:2]
    pts_ms = pts_ms or [i * 40 for i in range(len(frames))]
    c = av.open(str(path), "w", format=fmt)
    vs = c.add_stream(codec, rate=25)
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
    if codec == "libx264":
        vs.options = {"preset": "ultrafast", "crf": "12"}
    elif codec == "mpeg4":
        vs.codec_context.bit_rate = 4_000_000
    as_ = None
    if audio:
        as_ = c.add_stream(audio, rate=48000)
        as_.codec_context.layout = "mono"
        if audio == "aac":
            as_.codec_context.format = "fltp"
    for img, p in zip(frames, pts_ms):
        vf = av.VideoFrame.from_ndarray(img, format="rgb24")
        vf.pts, vf.time_base = p, Fraction(1, 1000)
        for pk in vs.encode(vf):
            c.mux(pk)
    for pk in vs.encode(None):
        c.mux(pk)
    if as_ is not None:
        ns = int((pts_ms[-1] / 1000 + 0.2) * 48000)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(ns) / 48000)).astype(np.float32)
        fmt_ = "fltp" if audio == "aac" else "s16"
        if fmt_ == "s16":
            tone = (tone * 32767).astype(np.int16)
        for k in range(0, ns, 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[None, k : k + 1024]), format=fmt_, layout="mono")
            af.sample_rate, af.pts, af.time_base = 48000, k, Fraction(1, 48000)
            for pk in as_.encode(af):
                c.mux(pk)
        for pk in as_.encode(None):
            c.mux(pk)
    c.close()


def read_all(path: Path) -> tuple[list[np.ndarray], list[float]]:
    from facekeys.indexer.video import VideoReader

    with VideoReader(path) as r:
        frames = [(f.image, f.time) for f in r.frames()]
    return [f for f, _ in frames], [t for _, t in frames]


def face_recognition_images(cache: Path) -> dict[str, np.ndarray]:
    """Obama/Biden photos from the face_recognition 1.3.0 sdist (pip download; cached in `cache`)."""
    import subprocess
    import sys

    cache.mkdir(parents=True, exist_ok=True)
    sdists = list(cache.glob("face_recognition-1.3.0.tar.gz"))
    if not sdists:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "face_recognition==1.3.0", "-d", str(cache)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        sdists = list(cache.glob("face_recognition-1.3.0.tar.gz"))
    out = {}
    with tarfile.open(sdists[0]) as tf:
        for m in tf.getmembers():
            name = Path(m.name).name
            if "/tests/test_images/" in m.name and name in ("obama.jpg", "biden.jpg", "obama2.jpg"):
                data = tf.extractfile(m).read()
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                out[name] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return out


def region_diff(a: np.ndarray, b: np.ndarray, box) -> float:
    """Mean absolute difference of two frames inside box (x, y, w, h)."""
    x, y, w, h = (int(round(v)) for v in box)
    x0, y0 = max(0, x), max(0, y)
    ra, rb = a[y0 : y + h, x0 : x + w].astype(np.int16), b[y0 : y + h, x0 : x + w].astype(np.int16)
    return float(np.abs(ra - rb).mean()) if ra.size else 0.0


def detail(img: np.ndarray, box) -> float:
    """High-frequency energy (variance of Laplacian) inside box."""
    x, y, w, h = (int(round(v)) for v in box)
    x0, y0 = max(0, x), max(0, y)
    g = cv2.cvtColor(np.ascontiguousarray(img[y0 : y + h, x0 : x + w]), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(g, cv2.CV_32F).var()) if g.size else 0.0



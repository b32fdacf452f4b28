"""Fixtures of the recovery tests: a small random-init pSp checkpoint and its generator (plumbing only: the
faces are noise-like textures, quality needs the real weights), grant key pairs, and a short test video."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

W, H = 160, 120
TIME_BASE = Fraction(1, 90000)
# irregular (variable frame rate) stamps: they must survive a reveal exactly
PTS = [0, 3600, 7200, 10800, 16200, 19800, 23400, 27000, 30600, 36000, 39600, 43200]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    from facekeys.models import save_random_psp_checkpoint

    return save_random_psp_checkpoint(tmp_path_factory.mktemp("ckpt") / "psp_small.pt", seed=5, small=True)


@pytest.fixture(scope="session")
def generator(checkpoint):
    from facekeys.models import FaceGenerator

    return FaceGenerator(checkpoint, device="cpu")


@pytest.fixture(scope="session")
def grant_keys(tmp_path_factory):
    """(private, public) PEM paths of the key store's grant signer, and of an attacker's."""
    from facekeys.security.grants import generate_keypair

    d = tmp_path_factory.mktemp("grants")
    generate_keypair(d / "grant.key", d / "grant.pub")
    generate_keypair(d / "evil.key", d / "evil.pub")
    return d / "grant.key", d / "grant.pub", d / "evil.key"


@pytest.fixture(scope="session")
def signer(grant_keys):
    from facekeys.security.grants import GrantSigner

    return GrantSigner.from_file(grant_keys[0])


def boxes_a() -> np.ndarray:
    """Identity A: a face box moving right in frames 0..10 (none in frame 11), plus one past the end."""
    rows = [(f, 20 + 3 * f, 30, 40, 48) for f in range(11)] + [(40, 10, 10, 20, 20)]
    return np.array(rows, np.int32)  # (12, 5) frame_index, x, y, w, h


def boxes_b() -> np.ndarray:
    """Identity B: a box in the right part of the frame in frames 2..9, touching the border (clipped)."""
    return np.array([(f, 125, 70, 30, 40) for f in range(2, 10)], np.int32)


def source_frames() -> list[np.ndarray]:
    """12 frames (H, W, 3): random texture (any change shows), the astronaut's face at A's boxes, and a
    coloured block at B's (stand-ins for what an indexer would have obfuscated)."""
    from PIL import Image
    from skimage.data import astronaut

    rng = np.random.default_rng(7)
    face = astronaut()[60:230, 150:310]  # the astronaut's head
    frames = []
    for f in range(len(PTS)):
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        for _, x, y, w, h in boxes_a()[boxes_a()[:, 0] == f]:
            img[y:y + h, x:x + w] = np.asarray(Image.fromarray(face).resize((int(w), int(h))))
        for _, x, y, w, h in boxes_b()[boxes_b()[:, 0] == f]:
            img[y:y + h, x:min(W, x + w)] = (40 + 10 * f, 200, 90)
        frames.append(img)
    return frames


def write_video(path: Path, frames: list[np.ndarray], pts=PTS, audio: bool = True) -> Path:
    """Lossless H.264 RGB (libx264rgb, crf 0) MP4 at the given pts, with a 440 Hz AAC track."""
    c = av.open(str(path), "w", format="mp4")
    vs = c.add_stream("libx264rgb", rate=25)
    vs.width, vs.height, vs.pix_fmt = W, H, "rgb24"
    vs.time_base = vs.codec_context.time_base = TIME_BASE
    vs.options = {"crf": "0", "preset": "ultrafast"}
    a = None
    if audio:
        a = c.add_stream("aac", rate=48000)
        a.codec_context.layout = "mono"
    for img, p in zip(frames, pts):
        vf = av.VideoFrame.from_ndarray(img, format="rgb24")
        vf.pts, vf.time_base = p, TIME_BASE
        for pkt in vs.encode(vf):
            c.mux(pkt)
    for pkt in vs.encode(None):
        c.mux(pkt)
    if a is not None:
        t = np.arange(48000 // 2) / 48000  # 0.5 s
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # (1, n) fltp mono
        for i in range(0, samples.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i:i + 1024]), format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, i
            for pkt in a.encode(af):
                c.mux(pkt)
        for pkt in a.encode(None):
            c.mux(pkt)
    c.close()
    return path


def read_video(path: Path):
    """-> (frames [(H, W, 3)], pts [int], time_base, audio packet count, audio codec or None)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        frames, pts = [], []
        for f in c.decode(vs):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(int(f.pts))
        tb = vs.time_base
    with av.open(str(path)) as c:
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
        n_audio = sum(1 for p in c.demux(*c.streams.audio) if p.size) if c.streams.audio else 0
    return frames, pts, tb, n_audio, audio


@pytest.fixture(scope="session")
def source_video(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("archive-src")
    return write_video(d / "cam1-0800-0123456789ab.mp4", source_frames())


@pytest.fixture(scope="session")
def vid():
    """The helpers above, for test modules (conftest modules are not importable under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(W=W, H=H, PTS=PTS, TIME_BASE=TIME_BASE, boxes_a=boxes_a, boxes_b=boxes_b,
                           source_frames=source_frames, write=write_video, read=read_video)

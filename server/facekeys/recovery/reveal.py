"""The reveal compositor: paste a regenerated face into exactly the regions the indexer obfuscated.

Where the face goes. A key's `Where.boxes` rows are (frame_index, x, y, w, h): the detector's face box in
that frame, in stored-video pixels, frame_index in decode order (the indexer's `VideoReader` numbering).
The indexer obfuscated each box grown by its margin (`ObfuscationConfig.margin`, 0.4 of the box per side),
rounded outwards and clipped to the frame; the reveal region is that same rectangle (`region`), so every
obfuscated pixel of the track is replaced and no pixel outside it is touched.

What goes there. The generator's output is an FFHQ-aligned square: face centred, eyes level, hair and
background around it. `PlacementConfig.face_region` says where a detector box sits in that square, as
fractions of its side. The default (0.22, 0.23, 0.79, 0.88) was measured by running the indexer's CenterFace
detector on skimage's astronaut (at 512 and 256 pixels) and mapping the detected box through the same
alignment quad that `align_face` uses (one face, so approximate: it puts the generated face where the
detector saw one, not a landmark-exact fit). The map frame -> generated square is then the axis-aligned
affine map that takes the detector box onto `face_region`; the reveal region (box + margin) is cut from
the generated square through that map and resized to the region (Pillow, antialiased bilinear). Rotation
of the original head is not restored (the keys keep no landmarks per frame).

Blending. Alpha ramps linearly from ~0 at the region's edges to 1 at `feather` x the region's smaller side
inside it (no ramp along a side clipped by the frame border), so the pasted face fades into the mosaic at
the edges instead of showing a hard seam. alpha is 0 outside the region: those pixels are not written.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facekeys.errors import InvalidArgument, Unavailable

from .video import OutputVideoConfig

__all__ = ["PlacementConfig", "RevealStats", "region", "face_patch", "feather_mask", "paste", "reveal_video"]


@dataclass(frozen=True)
class PlacementConfig:
    margin: float = 0.4  # the indexer's obfuscation margin (fraction of the box per side); a key's
    #                      attribute "obfuscation_margin" overrides it for that key
    face_region: tuple[float, float, float, float] = (0.22, 0.23, 0.79, 0.88)  # detector box in the aligned
    #                      generator output: x0, y0, x1, y1 as fractions of its side (measured, see module doc)
    feather: float = 0.15  # alpha ramp width as a fraction of the region's smaller side; 0 = hard edge

    def __post_init__(self):
        if not 0.0 <= self.margin <= 2.0:
            raise InvalidArgument(f"margin must be in [0, 2], got {self.margin}")
        fx0, fy0, fx1, fy1 = self.face_region
        if not (0.0 <= fx0 < fx1 <= 1.0 and 0.0 <= fy0 < fy1 <= 1.0):
            raise InvalidArgument(f"face_region must be 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1, got {self.face_region}")
        if not 0.0 <= self.feather <= 0.5:
            raise InvalidArgument(f"feather must be in [0, 0.5], got {self.feather}")


@dataclass(frozen=True)
class RevealStats:
    frames: int  # frames read and written
    frames_changed: int  # frames with at least one revealed region
    boxes_revealed: int
    boxes_skipped: int  # frame index past the end of the video, or a region entirely off the frame


def region(box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) -> (x0, y0, x1, y1) grown by `margin` per side, rounded outwards, clipped to the frame.

    The same rectangle as `facekeys.indexer.obfuscate.expand_box` (kept here: that module needs OpenCV).
    """
    x, y, w, h = (float(v) for v in box[-4:])
    mx, my = w * margin, h * margin
    return (max(0, int(math.floor(x - mx))), max(0, int(math.floor(y - my))),
            min(width, int(math.ceil(x + w + mx))), min(height, int(math.ceil(y + h + my))))


def face_patch(face: np.ndarray, box, rect: tuple[int, int, int, int],
               face_region: tuple[float, float, float, float]) -> np.ndarray:
    """The part of the generated square `face` (S, S, 3) that lands on `rect` -> (y1-y0, x1-x0, 3) uint8.

    Frame -> face pixels: u = fx0*S + (X - x) * (fx1 - fx0)*S / w, and likewise for v (pixel-edge coordinates).
    """
    S = face.shape[0]
    x, y, w, h = (float(v) for v in box[-4:])
    fx0, fy0, fx1, fy1 = face_region
    sx, sy = (fx1 - fx0) * S / w, (fy1 - fy0) * S / h
    x0, y0, x1, y1 = rect
    src = (fx0 * S + (x0 - x) * sx, fy0 * S + (y0 - y) * sy, fx0 * S + (x1 - x) * sx, fy0 * S + (y1 - y) * sy)
    pad = int(math.ceil(max(0.0, -src[0], -src[1], src[2] - S, src[3] - S))) + 1  # margin may leave the square
    img = face
    if pad > 1:
        img = np.pad(face, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    else:
        pad = 0
    out = Image.fromarray(img).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR,
                                      box=tuple(c + pad for c in src), reducing_gap=None)
    return np.asarray(out, dtype=np.uint8)  # (y1-y0, x1-x0, 3)


def feather_mask(rect: tuple[int, int, int, int], width: int, height: int, feather: float,
                 clipped: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Alpha (y1-y0, x1-x0, 1) float32 in (0, 1]: linear ramp over `feather` x the smaller side, no ramp on
    sides in `clipped` (left, top, right, bottom: the region was cut there by the frame border)."""
    x0, y0, x1, y1 = rect
    rw, rh = x1 - x0, y1 - y0
    ramp = feather * min(rw, rh)
    if ramp < 1.0:
        return np.ones((rh, rw, 1), np.float32)
    cx = np.arange(rw, dtype=np.float32) + 0.5  # pixel centres
    cy = np.arange(rh, dtype=np.float32) + 0.5
    inf = np.float32(np.inf)
    dx = np.minimum(inf if clipped[0] else cx, inf if clipped[2] else rw - cx)
    dy = np.minimum(inf if clipped[1] else cy, inf if clipped[3] else rh - cy)
    a = np.minimum(np.clip(dx / ramp, 0, 1)[None, :], np.clip(dy / ramp, 0, 1)[:, None])  # (rh, rw)
    return a[:, :, None].astype(np.float32)


def paste(frame: np.ndarray, face: np.ndarray, box, placement: PlacementConfig, margin: float | None = None) -> bool:
    """Blend `face` (S, S, 3) into `frame` (H, W, 3) uint8 in place over box's reveal region; False if empty."""
    H, W = frame.shape[:2]
    m = placement.margin if margin is None else margin
    rect = region(box, m, W, H)
    x0, y0, x1, y1 = rect
    if x1 <= x0 or y1 <= y0:
        return False
    x, y, w, h = (float(v) for v in box[-4:])
    clipped = (x - w * m < 0, y - h * m < 0, x + w + w * m > W, y + h + h * m > H)
    patch = face_patch(face, box, rect, placement.face_region).astype(np.float32)  # (rh, rw, 3)
    alpha = feather_mask(rect, W, H, placement.feather, clipped)  # (rh, rw, 1)
    roi = frame[y0:y1, x0:x1]
    roi[:] = np.rint(alpha * patch + (1.0 - alpha) * roi.astype(np.float32)).clip(0, 255).astype(np.uint8)
    return True


def reveal_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    faces: Mapping[int, np.ndarray],
    boxes: Mapping[int, np.ndarray],
    placement: PlacementConfig = PlacementConfig(),
    output: OutputVideoConfig = OutputVideoConfig(),
    *,
    margins: Mapping[int, float] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> RevealStats:
    """Copy `src` to `dst`, pasting faces[k] (S, S, 3) into every region of boxes[k] (M, 5) for each key k.

    Frames, pts, frame rate and audio are carried over; `dst` appears only when complete (`<dst>.partial`
    while writing, removed on failure). Faces are given, already generated: nothing is generated per frame.
    """
    from facekeys.indexer.video import VideoReader, VideoWriter  # PyAV

    per_frame: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)  # frame_index -> [(key, box row)]
    total = 0
    for key, rows in boxes.items():
        if key not in faces:
            raise InvalidArgument(f"no face for key {key}")
        for row in np.asarray(rows).reshape(-1, 5):
            per_frame[int(row[0])].append((key, row))
            total += 1
    margins = margins or {}
    frames = changed = revealed = 0
    with VideoReader(src) as reader:
        info = reader.info
        writer = VideoWriter(dst, info.width, info.height, info.time_base, info.rate, reader.audio_stream,
                             output.encoder())
        ok = False
        try:
            for fr in reader.frames(audio_sink=writer.mux_audio):
                if cancelled is not None and cancelled():
                    raise Unavailable("reveal cancelled by the caller; the partial output was removed")
                todo = per_frame.get(fr.index)
                if todo:
                    image = fr.image  # (H, W, 3) uint8, writable
                    n = sum(paste(image, faces[k], row, placement, margins.get(k)) for k, row in todo)
                    revealed += n
                    changed += n > 0
                writer.write(fr.image, fr.pts)
                frames += 1
            writer.close()
            ok = True
        finally:
            if not ok:
                writer.abort()
    return RevealStats(frames, changed, revealed, total - revealed)

"""Streaming face tracker: links per-frame detections into tracks and fills the gaps between them.

Privacy rule: between two detections of the same face no frame may show it unobfuscated. A track that
misses up to `max_gap` frames gets linearly interpolated boxes for them; a track also gets its box held
for `hold` frames before its first and after its last detection. Such boxes are only known once a later
frame has been seen, so the caller keeps a look-ahead buffer:

    after `update(i, ...)`, every box for frames <= i - max_gap is final (`Tracker.lookahead == max_gap`)

and takes them with `pop_boxes(f)` just before frame f is written. Memory is bounded by the number of live
tracks plus `max_gap` frames of boxes; finished tracks are handed back as soon as they end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from facekeys.errors import InvalidArgument

from .detect import Detection

__all__ = ["TrackerConfig", "Track", "Tracker", "crop_quality"]


@dataclass(frozen=True)
class TrackerConfig:
    iou_threshold: float = 0.2  # min IoU (against the motion-predicted box) to continue a track ...
    center_distance: float = 0.6  # ... or centre distance below this times the box's larger side
    max_gap: int = 6  # missed frames bridged by interpolation; also the writer's look-ahead in frames
    hold: int = 2  # frames a box is held before the first / after the last detection (<= max_gap)
    min_hits: int = 2  # detections a track needs to be returned (shorter ones are still obfuscated)
    crop_scale: float = 2.0  # best crop = face box scaled by this around its centre (room to align)

    def __post_init__(self):
        if not 0.0 < self.iou_threshold <= 1.0:
            raise InvalidArgument(f"TrackerConfig.iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if not 0.0 <= self.center_distance <= 5.0:
            raise InvalidArgument(f"TrackerConfig.center_distance must be in [0, 5], got {self.center_distance}")
        if not 0 <= self.max_gap <= 300:
            raise InvalidArgument(f"TrackerConfig.max_gap must be in 0..300 frames, got {self.max_gap}")
        if not 0 <= self.hold <= self.max_gap:
            raise InvalidArgument(f"TrackerConfig.hold must be in 0..max_gap ({self.max_gap}), got {self.hold}")
        if self.min_hits < 1:
            raise InvalidArgument(f"TrackerConfig.min_hits must be >= 1, got {self.min_hits}")
        if not 1.0 <= self.crop_scale <= 4.0:
            raise InvalidArgument(f"TrackerConfig.crop_scale must be in [1, 4], got {self.crop_scale}")


@dataclass(frozen=True, eq=False)
class Track:
    track_id: int
    boxes: tuple[tuple[int, int, int, int, int], ...]  # (frame_index, x, y, w, h), every frame covered
    timestamps: tuple[float, ...]  # seconds, one per entry of `boxes`
    detected: tuple[bool, ...]  # per entry of `boxes`: True = detector box, False = interpolated/held
    best_frame: int  # frame index of the best crop
    best_box: tuple[float, float, float, float]  # (x, y, w, h) in frame pixels at best_frame
    best_landmarks: np.ndarray  # (5, 2) float32 x, y in best_crop pixels (left eye, right eye, nose, mouth l, r)
    best_crop: np.ndarray  # (h, w, 3) uint8 RGB, un-obfuscated, box grown by crop_scale
    best_quality: float  # sharpness x size x frontal-ness

    @property
    def first_frame(self) -> int:
        return self.boxes[0][0]

    @property
    def last_frame(self) -> int:
        return self.boxes[-1][0]


def _int_box(x: float, y: float, w: float, h: float) -> tuple[int, int, int, int]:
    """Float box -> smallest integer box covering it."""
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    return x0, y0, int(np.ceil(x + w)) - x0, int(np.ceil(y + h)) - y0


def _iou(a: np.ndarray, b: np.ndarray) -> float:  # xywh
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def frontalness(landmarks: np.ndarray) -> float:
    """1 for a frontal face, towards 0 for a profile: symmetry of eyes and mouth corners about the nose."""
    le, re, nose, ml, mr = landmarks.astype(np.float64)
    eye_d = re - le
    span = float(np.hypot(*eye_d))
    if span < 1e-6:
        return 0.0
    axis = eye_d / span
    l1, r1 = float(np.dot(nose - le, axis)), float(np.dot(re - nose, axis))
    l2, r2 = float(np.dot(nose - ml, axis)), float(np.dot(mr - nose, axis))
    sym = []
    for a, b in ((l1, r1), (l2, r2)):
        if a <= 0 or b <= 0:  # nose outside the eyes / mouth corners: strong profile
            sym.append(0.0)
        else:
            sym.append(min(a, b) / max(a, b))
    return float(np.mean(sym))


def crop_quality(image: np.ndarray, box, landmarks: np.ndarray) -> float:
    """sharpness (variance of Laplacian on a 64x64 face resample) x face area x frontal-ness."""
    H, W = image.shape[:2]
    x0, y0, w, h = _int_box(*box)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(W, x0 + w), min(H, y0 + h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0.0
    face = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    face = cv2.resize(face, (64, 64), interpolation=cv2.INTER_AREA)
    sharp = float(cv2.Laplacian(face, cv2.CV_32F).var())
    return sharp * float(box[2] * box[3]) * frontalness(landmarks)


@dataclass(eq=False)
class _Live:
    track_id: int
    boxes: list  # [(frame, x, y, w, h) ints]
    times: list
    detected: list
    last_det: np.ndarray  # (4,) float xywh at last detection
    last_frame: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # per frame, xywh
    hits: int = 1
    best: tuple | None = None  # (quality, frame, box, landmarks_in_crop, crop)


class Tracker:
    """Frame-by-frame tracker. Call `update` for every frame in order, `pop_boxes` when writing, `finish` at
    the end; both `update` and `finish` return the tracks that ended (with >= min_hits detections)."""

    def __init__(self, cfg: TrackerConfig = TrackerConfig()):
        self.cfg = cfg
        self._live: list[_Live] = []
        self._next_id = 0
        self._frame = -1  # last frame index given to update()
        self._released = -1  # frames <= this were popped (written); boxes for them can no longer be added
        self._pending: dict[int, list[tuple[int, int, int, int, int]]] = {}  # frame -> [(track_id, x, y, w, h)]
        self._times: dict[int, float] = {}  # timestamps of the frames still inside the look-ahead window

    @property
    def lookahead(self) -> int:
        """Frames the writer must hold back: after update(i), boxes for frames <= i - lookahead are final."""
        return self.cfg.max_gap

    # -- public ------------------------------------------------------------------------------------------

    def update(self, frame_index: int, timestamp: float, image: np.ndarray, detections: list[Detection]) -> list[Track]:
        """Add frame `frame_index` (must be previous + 1) with its detections. `image` (H, W, 3) uint8 RGB,
        un-obfuscated (used for the best crop). Returns the tracks that can no longer continue."""
        if frame_index != self._frame + 1:
            raise InvalidArgument(f"Tracker.update wants frame {self._frame + 1}, got {frame_index}")
        self._frame = frame_index
        self._times[frame_index] = float(timestamp)
        self._match(frame_index, image, detections)
        ended = self._expire(frame_index)
        for f in [f for f in self._times if f < frame_index - self.cfg.max_gap - 1]:
            del self._times[f]
        return ended

    def pop_boxes(self, frame_index: int) -> list[tuple[int, int, int, int, int]]:
        """Final boxes `(track_id, x, y, w, h)` for a frame about to be written; call in frame order once
        `frame_index <= last update - lookahead` (or after `finish`)."""
        if frame_index > self._frame - self.cfg.max_gap and self._live:
            raise InvalidArgument(f"boxes for frame {frame_index} are not final until frame {frame_index + self.cfg.max_gap}")
        self._released = max(self._released, frame_index)
        return self._pending.pop(frame_index, [])

    def finish(self) -> list[Track]:
        """End of video: close every live track (held boxes limited to frames already seen)."""
        ended = [t for t in (self._close(lt) for lt in self._live) if t is not None]
        self._live = []
        return ended

    # -- internals ---------------------------------------------------------------------------------------

    def _add_box(self, lt: _Live, f: int, box_xywh, detected: bool, front: bool = False) -> None:
        if f <= self._released or f not in self._times:
            return
        ib = _int_box(*box_xywh)
        entry = (f, *ib)
        if front:
            lt.boxes.insert(0, entry), lt.times.insert(0, self._times[f]), lt.detected.insert(0, detected)
        else:
            lt.boxes.append(entry), lt.times.append(self._times[f]), lt.detected.append(detected)
        self._pending.setdefault(f, []).append((lt.track_id, *ib))

    def _expire(self, f: int) -> list[Track]:
        ended, live = [], []
        for lt in self._live:
            if f - lt.last_frame > self.cfg.max_gap:  # cannot be bridged any more
                t = self._close(lt)
                if t is not None:
                    ended.append(t)
            else:
                live.append(lt)
        self._live = live
        return ended

    def _close(self, lt: _Live) -> Track | None:
        for k in range(1, self.cfg.hold + 1):  # hold the last box a little after the last detection
            if lt.last_frame + k <= self._frame:
                self._add_box(lt, lt.last_frame + k, lt.last_det, False)
        if lt.hits < self.cfg.min_hits or lt.best is None:
            return None
        q, bf, bbox, blm, crop = lt.best
        return Track(
            track_id=lt.track_id,
            boxes=tuple(lt.boxes),
            timestamps=tuple(lt.times),
            detected=tuple(lt.detected),
            best_frame=bf,
            best_box=bbox,
            best_landmarks=blm,
            best_crop=crop,
            best_quality=q,
        )

    def _match(self, f: int, image: np.ndarray, dets: list[Detection]) -> None:
        cfg = self.cfg
        pairs = []  # (score, track_idx, det_idx)
        for ti, lt in enumerate(self._live):
            pred = lt.last_det + lt.velocity * (f - lt.last_frame)
            pred[2:] = np.maximum(pred[2:], 1.0)
            pc = pred[:2] + pred[2:] / 2
            for di, d in enumerate(dets):
                db = np.array([d.x, d.y, d.w, d.h])
                iou = _iou(pred, db)
                dist = float(np.hypot(*(db[:2] + db[2:] / 2 - pc))) / max(pred[2], pred[3], db[2], db[3])
                if iou >= cfg.iou_threshold or dist < cfg.center_distance:
                    pairs.append((iou + max(0.0, 1.0 - dist / max(cfg.center_distance, 1e-6)) * 0.5, ti, di))
        pairs.sort(key=lambda p: -p[0])
        used_t, used_d = set(), set()
        for _, ti, di in pairs:  # greedy assignment, best pair first
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti), used_d.add(di)
            self._extend(self._live[ti], f, image, dets[di])
        for di, d in enumerate(dets):
            if di not in used_d:
                self._start(f, image, d)

    def _extend(self, lt: _Live, f: int, image: np.ndarray, d: Detection) -> None:
        box = np.array([d.x, d.y, d.w, d.h])
        gap = f - lt.last_frame
        for k in range(1, gap):  # linear interpolation through the missed frames
            a = k / gap
            self._add_box(lt, lt.last_frame + k, lt.last_det * (1 - a) + box * a, False)
        self._add_box(lt, f, box, True)
        lt.velocity = (box - lt.last_det) / gap
        lt.last_det, lt.last_frame = box, f
        lt.hits += 1
        self._consider(lt, f, image, d)

    def _start(self, f: int, image: np.ndarray, d: Detection) -> None:
        box = np.array([d.x, d.y, d.w, d.h])
        lt = _Live(self._next_id, [], [], [], box, f)
        self._next_id += 1
        self._add_box(lt, f, box, True)
        for k in range(1, self.cfg.hold + 1):  # hold the first box a little before the first detection
            self._add_box(lt, f - k, box, False, front=True)
        self._live.append(lt)
        self._consider(lt, f, image, d)

    def _consider(self, lt: _Live, f: int, image: np.ndarray, d: Detection) -> None:
        q = crop_quality(image, (d.x, d.y, d.w, d.h), d.landmarks)
        if lt.best is not None and q <= lt.best[0]:
            return
        H, W = image.shape[:2]
        s = self.cfg.crop_scale
        cx, cy = d.x + d.w / 2, d.y + d.h / 2
        half = max(d.w, d.h) * s / 2
        x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
        x1, y1 = min(W, int(np.ceil(cx + half))), min(H, int(np.ceil(cy + half)))
        crop = image[y0:y1, x0:x1].copy()  # (h, w, 3) uint8, taken before obfuscation
        lms = (d.landmarks - np.array([x0, y0], dtype=np.float32)).astype(np.float32)  # (5, 2)
        lt.best = (q, f, (d.x, d.y, d.w, d.h), lms, crop)

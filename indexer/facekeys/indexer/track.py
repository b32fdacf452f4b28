"""Streaming face tracker: links per-frame detections into tracks (one track = one key) and fills the gaps.

Privacy rule: between two detections of the same face no frame may show it unobfuscated. A track that
misses up to `max_gap` frames gets linearly interpolated boxes for them; a track also gets its box held
for `hold` frames before its first and after its last detection. Such boxes are only known once a later
frame has been seen, so the caller keeps a look-ahead buffer:

    after `update(i, ...)`, every box for frames <= i - max_gap is final (`Tracker.lookahead == max_gap`)

and takes them with `pop_boxes(f)` just before frame f is written. Memory is bounded by the number of live
tracks plus `max_gap` frames of boxes; finished tracks are handed back once no shot change can reach their
keys any more (`cuts.gradual_window` frames after their last box: a gradual transition is found late and dated
back).

Purity rule: every box of a key shows one person. A detection continues a track only if it overlaps the
track's motion-predicted box, moved and changed size like a face can (`max_speed`, `max_scale`) and looks
like one of the track's last detections (`appearance`: a cheap crop descriptor, or a caller's identity
descriptor; not a veto where a neighbouring face spoils the crop and motion leaves no other choice); every
track ends at a shot cut (`cuts`, see shots.py). Obfuscation is more generous than keys: boxes held or
bridged across a cut or across a refused link (motion alone would have linked) are drawn but kept out of
the key, and so is an interpolated/held box that another track's detection covers (occlusion).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from facekeys.errors import InvalidArgument

from .detect import Detection
from .shots import CutDetector, ShotConfig

__all__ = ["TrackerConfig", "Track", "Tracker", "crop_quality", "crop_descriptor"]

_JITTER = 0.25  # face sizes of detector box jitter allowed on top of max_speed (small faces)
_LOOKS = 3  # a detection is compared with the track's last this many detections (one bad crop is not a split)
_COVERED = 0.2  # an undetected box this much covered by another track's detection may show that face


@dataclass(frozen=True)
class TrackerConfig:
    iou_threshold: float = 0.2  # min IoU (against the motion-predicted box) to continue a track ...
    center_distance: float = 0.6  # ... or centre distance below this times the box's larger side
    max_gap: int = 6  # missed frames bridged by interpolation; also the writer's look-ahead in frames
    hold: int = 2  # frames a box is held before the first / after the last detection (<= max_gap)
    min_hits: int = 2  # detections a track needs to be returned (shorter ones are still obfuscated)
    crop_scale: float = 2.0  # best crop = face box scaled by this around its centre (room to align)
    max_speed: float = 20.0  # face sizes per second a face's centre may move between two linked detections
    max_scale: float = 1.5  # max size ratio (sqrt of area) between two linked detections
    appearance: float | None = 0.17  # max descriptor distance (1 - cosine) between linked detections; None = off
    cuts: ShotConfig | None = ShotConfig()  # shot-cut detection ending every track; None = off

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
        if not 0.0 < self.max_speed <= 1000.0:
            raise InvalidArgument(f"TrackerConfig.max_speed must be in (0, 1000] face sizes/s, got {self.max_speed}")
        if not 1.0 < self.max_scale <= 10.0:
            raise InvalidArgument(f"TrackerConfig.max_scale must be in (1, 10], got {self.max_scale}")
        if self.appearance is not None and not 0.0 < self.appearance <= 2.0:
            raise InvalidArgument(f"TrackerConfig.appearance must be None or in (0, 2], got {self.appearance}")
        if self.cuts is not None and not isinstance(self.cuts, ShotConfig):
            raise InvalidArgument(f"TrackerConfig.cuts must be None or a ShotConfig, got {type(self.cuts).__name__}")


@dataclass(frozen=True, eq=False)
class Track:
    track_id: int
    boxes: tuple[tuple[int, int, int, int, int], ...]  # (frame_index, x, y, w, h), frame order, one shot;
    # no gaps except frames where another face covered an interpolated/held box (obfuscated, not in the key)
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


def _inter(a, b) -> float:  # xywh
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return float(iw * ih) if iw > 0 and ih > 0 else 0.0


_SMALL_FACE = 32.0  # px: faces up to this side get grown boxes before their first detection (Tracker._start)


def _grown(box: np.ndarray, sizes: float) -> np.ndarray:
    """(4,) xywh `box` grown by `sizes` times its larger side on every side."""
    g = sizes * max(box[2], box[3])
    return np.array([box[0] - g, box[1] - g, box[2] + 2 * g, box[3] + 2 * g])


def _moved(box: np.ndarray, velocity: np.ndarray, frames: int) -> np.ndarray:
    """(4,) xywh `box` carried `frames` frames along `velocity` (xywh per frame; negative: backwards)."""
    out = box + velocity * frames
    out[2:] = np.maximum(out[2:], 1.0)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:  # xywh
    inter = _inter(a, b)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter) if inter else 0.0


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


def crop_descriptor(image: np.ndarray, detections: list[Detection]) -> np.ndarray:
    """Cheap appearance descriptor: the face box grown 1.3x (hairline, jaw) as an 8x8 RGB thumbnail, mean
    removed, unit length. Returns (N, 192) float32; a flat crop (no texture) gives a zero row = no evidence.
    A crop reaching past the frame edge is padded by replicating the edge, so a face entering the frame keeps
    its layout in the thumbnail."""
    H, W = image.shape[:2]
    out = np.zeros((len(detections), 192), np.float32)
    for i, d in enumerate(detections):
        cx, cy, hw, hh = d.x + d.w / 2, d.y + d.h / 2, d.w * 0.65, d.h * 0.65
        x0, y0, x1, y1 = int(cx - hw), int(cy - hh), int(np.ceil(cx + hw)), int(np.ceil(cy + hh))
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
        if cx1 - cx0 < 2 or cy1 - cy0 < 2:
            continue
        step = max(1, min(y1 - y0, x1 - x0) // 32)  # subsample a large crop to ~32 px first: same thumbnail, cheaper
        crop = np.ascontiguousarray(image[cy0:cy1:step, cx0:cx1:step])
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            crop = cv2.copyMakeBorder(crop, (cy0 - y0) // step, (y1 - cy1) // step, (cx0 - x0) // step, (x1 - cx1) // step,
                                      cv2.BORDER_REPLICATE)
        v = cv2.resize(crop, (8, 8), interpolation=cv2.INTER_AREA)  # (8, 8, 3)
        v = v.astype(np.float32).ravel()  # (192,)
        v -= v.mean()
        n = float(np.linalg.norm(v))
        if n > 1e-3 * v.size:
            out[i] = v / n
    return out


def _look_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cosine of two descriptors; 0 (no evidence against) when either is a zero row."""
    na, nb = float(np.dot(a, a)), float(np.dot(b, b))
    if na < 1e-12 or nb < 1e-12:
        return 0.0
    return 1.0 - float(np.dot(a, b)) / float(np.sqrt(na * nb))


@dataclass(eq=False)
class _Live:
    track_id: int
    boxes: list  # [(frame, x, y, w, h) ints]: the key's boxes
    times: list
    detected: list
    last_det: np.ndarray  # (4,) float xywh at last detection
    last_frame: int
    last_time: float
    looks: list  # [(D,) appearance descriptors of the last _LOOKS detections]
    key_from: int  # no key box before this frame (its shot's first frame, or where it took another's place)
    ended_at: int | None = None  # a cut or another person here ended the track: no links, no key box from here
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # per frame, xywh
    hits: int = 1
    best: tuple | None = None  # (quality, frame, box, landmarks_in_crop, crop)
    bests: list = field(default_factory=list)  # the last improvements of `best` (a shot change dated back drops some)


class Tracker:
    """Frame-by-frame tracker. Call `update` for every frame in order, `pop_boxes` when writing, `finish` at
    the end; both `update` and `finish` return the tracks that ended (with >= min_hits detections).

    `describe(image, detections) -> (N, D)` replaces the crop descriptor (e.g. a face-identity embedding);
    `cfg.appearance` is then the distance (1 - cosine) above which its two crops are different people."""

    def __init__(self, cfg: TrackerConfig = TrackerConfig(),
                 describe: Callable[[np.ndarray, list[Detection]], np.ndarray] | None = None):
        if not isinstance(cfg, TrackerConfig):
            raise InvalidArgument(f"cfg must be a TrackerConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self._describe = describe or crop_descriptor
        self._cuts = CutDetector(cfg.cuts) if cfg.cuts is not None else None
        self._shot_start = 0
        self._live: list[_Live] = []
        self._closing: list[_Live] = []  # ended, handed back once no gradual shot change can reach their keys
        self._next_id = 0
        self._frame = -1  # last frame index given to update()
        self._released = -1  # frames <= this were popped (written); boxes for them can no longer be added
        self._pending: dict[int, list[tuple[int, int, int, int, int]]] = {}  # frame -> [(track_id, x, y, w, h)]
        self._times: dict[int, float] = {}  # timestamps of the frames still inside the look-ahead window
        self._seen: dict[int, list[tuple[int, np.ndarray]]] = {}  # frame -> [(track_id, (4,) xywh detection)]

    @property
    def lookahead(self) -> int:
        """Frames the writer must hold back: after update(i), boxes for frames <= i - lookahead are final."""
        return self.cfg.max_gap

    # -- public ------------------------------------------------------------------------------------------

    def update(self, frame_index: int, timestamp: float, image: np.ndarray, detections: list[Detection]) -> list[Track]:
        """Add frame `frame_index` (must be previous + 1) with its detections. `image` (H, W, 3) uint8 RGB,
        un-obfuscated (cut detection, appearance, best crop). Returns the tracks that can no longer continue."""
        if frame_index != self._frame + 1:
            raise InvalidArgument(f"Tracker.update wants frame {self._frame + 1}, got {frame_index}")
        self._frame = frame_index
        self._times[frame_index] = float(timestamp)
        if self._cuts is not None:
            new_shot = self._cuts.update(image)
            if new_shot or self._cuts.in_transition:  # blends inside a gradual transition: in no key
                self._end_shot(self._cuts.shot_start if new_shot else frame_index)
                self._shot_start = frame_index + 1 if self._cuts.in_transition else frame_index
        looks = np.asarray(self._describe(image, detections), np.float32)  # (N, D)
        if looks.ndim != 2 or looks.shape[0] != len(detections):
            raise InvalidArgument(f"describe gave {looks.shape} for {len(detections)} detections, want (N, D)")
        self._match(frame_index, image, detections, looks)
        ended = self._expire(frame_index)
        for f in [f for f in self._times if f < frame_index - self.cfg.max_gap - 1]:
            del self._times[f]
            self._seen.pop(f, None)
        return ended

    def pop_boxes(self, frame_index: int) -> list[tuple[int, int, int, int, int]]:
        """Final boxes `(track_id, x, y, w, h)` to obfuscate in a frame about to be written; call in frame order
        once `frame_index <= last update - lookahead` (or after `finish`). A superset of the keys' boxes."""
        if frame_index > self._frame - self.cfg.max_gap and self._live:
            raise InvalidArgument(f"boxes for frame {frame_index} are not final until frame {frame_index + self.cfg.max_gap}")
        self._released = max(self._released, frame_index)
        return self._pending.pop(frame_index, [])

    def finish(self) -> list[Track]:
        """End of video: close every live track (held boxes limited to frames already seen)."""
        for lt in self._live:
            self._hold_after(lt)
        ended = [t for t in map(self._as_track, self._closing + self._live) if t is not None]
        self._live, self._closing = [], []
        return ended

    # -- internals ---------------------------------------------------------------------------------------

    def _end_shot(self, start: int) -> None:
        """A new shot began at frame `start` (<= now): no live track links on, nor keeps key boxes from there."""
        for lt in self._live + self._closing:
            if lt.ended_at is not None and lt.ended_at <= start:
                continue
            lt.ended_at = start
            keep = sum(1 for b in lt.boxes if b[0] < start)  # boxes are in frame order
            del lt.boxes[keep:], lt.times[keep:], lt.detected[keep:]
            lt.hits = sum(lt.detected)
            lt.bests = [b for b in lt.bests if b[1] < start]
            lt.best = lt.bests[-1] if lt.bests else None

    def _in_key(self, lt: _Live, f: int, box, detected: bool) -> bool:
        """May the key of `lt` hold this box? Only inside its shot, and an undetected box only if no other
        track's detection covers it (then it shows that face, e.g. the one passing in front)."""
        if f < lt.key_from or (lt.ended_at is not None and f >= lt.ended_at):
            return False
        if detected:
            return True
        area = max(float(box[2] * box[3]), 1e-6)
        return all(tid == lt.track_id or _inter(box, b) < _COVERED * area for tid, b in self._seen.get(f, ()))

    def _add_box(self, lt: _Live, f: int, box_xywh, detected: bool, front: bool = False, key: bool = True) -> None:
        """Obfuscate `box_xywh` in frame f (if not written yet) and, when allowed, add it to the key."""
        if f <= self._released or f not in self._times:
            return
        ib = _int_box(*box_xywh)
        self._pending.setdefault(f, []).append((lt.track_id, *ib))
        if not (key and self._in_key(lt, f, np.asarray(box_xywh, np.float64), detected)):
            return
        entry = (f, *ib)
        if front:
            lt.boxes.insert(0, entry), lt.times.insert(0, self._times[f]), lt.detected.insert(0, detected)
        else:
            lt.boxes.append(entry), lt.times.append(self._times[f]), lt.detected.append(detected)

    def _expire(self, f: int) -> list[Track]:
        live = []
        for lt in self._live:
            if f - lt.last_frame > self.cfg.max_gap:  # cannot be bridged any more
                self._hold_after(lt)
                self._closing.append(lt)
            else:
                live.append(lt)
        self._live = live
        # A gradual shot change found later may date back up to gradual_window frames: hand a track back only
        # once none can reach its key any more.
        wait = self.cfg.cuts.gradual_window if self.cfg.cuts is not None else 0
        done = [lt for lt in self._closing if not lt.boxes or lt.boxes[-1][0] + wait <= f]
        self._closing = [lt for lt in self._closing if lt.boxes and lt.boxes[-1][0] + wait > f]
        return [t for t in map(self._as_track, done) if t is not None]

    def _hold_after(self, lt: _Live) -> None:
        for k in range(1, self.cfg.hold + 1):  # hold the last box a little after the last detection
            if lt.last_frame + k <= self._frame:
                self._add_box(lt, lt.last_frame + k, lt.last_det, False)
                if lt.hits > 1:  # and where its motion carries it (obfuscation only)
                    self._add_moved(lt, lt.last_frame + k, lt.last_det, lt.velocity, k)

    def _add_moved(self, lt: _Live, f: int, box: np.ndarray, velocity: np.ndarray, frames: int) -> None:
        """Obfuscate (not key) `box` carried `frames` frames along `velocity` in frame f, if that moves it."""
        moved = _moved(box, velocity, frames)
        if _int_box(*moved) != _int_box(*box):
            self._add_box(lt, f, moved, False, key=False)

    def _as_track(self, lt: _Live) -> Track | None:
        if lt.hits < self.cfg.min_hits or lt.best is None or not lt.boxes:
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

    def _overlaps(self, lt: _Live, f: int, db: np.ndarray) -> tuple[float, float] | None:
        """(IoU, centre distance / larger side) against the motion-predicted box, or None if too far apart."""
        cfg = self.cfg
        pred = lt.last_det + lt.velocity * (f - lt.last_frame)
        pred[2:] = np.maximum(pred[2:], 1.0)
        iou = _iou(pred, db)
        dist = float(np.hypot(*(db[:2] + db[2:] / 2 - pred[:2] - pred[2:] / 2))) / max(pred[2], pred[3], db[2], db[3])
        return (iou, dist) if iou >= cfg.iou_threshold or dist < cfg.center_distance else None

    def _plausible(self, lt: _Live, t: float, db: np.ndarray) -> bool:
        """Could one face have moved from the track's last detection to `db` in the time between them?"""
        cfg = self.cfg
        size = float(np.sqrt(lt.last_det[2] * lt.last_det[3]))
        ratio = float(np.sqrt(db[2] * db[3])) / max(size, 1e-6)
        if not 1.0 / cfg.max_scale <= ratio <= cfg.max_scale:
            return False
        step = float(np.hypot(*(db[:2] + db[2:] / 2 - lt.last_det[:2] - lt.last_det[2:] / 2))) / max(size, 1e-6)
        return step <= cfg.max_speed * max(t - lt.last_time, 0.0) + _JITTER

    def _match(self, f: int, image: np.ndarray, dets: list[Detection], looks: np.ndarray) -> None:
        cfg = self.cfg
        t = self._times[f]
        boxes = [np.array([d.x, d.y, d.w, d.h], np.float64) for d in dets]
        near = []  # (track_idx, det_idx): overlap alone would link them (privacy bridging)
        cands = []  # (track_idx, det_idx, iou, dist): overlap, motion gates and shot allow the link
        for ti, lt in enumerate(self._live):
            for di, db in enumerate(boxes):
                ov = self._overlaps(lt, f, db)
                if ov is None:
                    continue
                near.append((ti, di))
                if lt.ended_at is None and self._plausible(lt, t, db):
                    cands.append((ti, di, *ov))
        per_t, per_d = Counter(c[0] for c in cands), Counter(c[1] for c in cands)
        pairs = []  # (score, track_idx, det_idx): links also allowed by appearance
        for ti, di, iou, dist in cands:
            score = iou + max(0.0, 1.0 - dist / max(cfg.center_distance, 1e-6)) * 0.5
            if cfg.appearance is not None:
                look = min(_look_distance(r, looks[di]) for r in self._live[ti].looks)
                # A crop that takes in another detection (a face passing in front, partly hiding this one) says
                # little; where motion leaves no choice (one candidate each way) it does not veto the link.
                excused = per_t[ti] == 1 and per_d[di] == 1 and self._crowded(di, boxes)
                if look > cfg.appearance and not excused:
                    continue
                score += max(0.0, 1.0 - look / cfg.appearance)
            pairs.append((score, ti, di))
        pairs.sort(key=lambda p: -p[0])
        owner: dict[int, int] = {}  # det_idx -> live track_idx
        used_t = set()
        for _, ti, di in pairs:  # greedy assignment, best pair first
            if ti in used_t or di in owner:
                continue
            used_t.add(ti)
            owner[di] = ti
        seen = self._seen.setdefault(f, [])
        for di, ti in owner.items():
            seen.append((self._live[ti].track_id, boxes[di]))
        live = list(self._live)
        for di, d in enumerate(dets):
            if di in owner:
                self._extend(live[owner[di]], f, image, d, looks[di])
        # A link refused (appearance, motion gates, cut) where overlap alone would link: someone else may now be
        # where the track's face was. Draw the gap anyway (privacy rule) but outside any key, and let neither
        # key hold a box on the other side of frame f.
        refused = [(ti, di) for ti, di in near if di not in owner and ti not in used_t]
        took_place = {di for _, di in refused}
        for di, d in enumerate(dets):
            if di not in owner:
                key_from = f if di in took_place else self._shot_start
                seen.append((self._start(f, image, d, looks[di], key_from).track_id, boxes[di]))
        for ti, di in refused:
            lt = live[ti]
            self._bridge(lt, f, boxes[di])
            if lt.ended_at is None:
                lt.ended_at = f

    @staticmethod
    def _crowded(di: int, boxes: list[np.ndarray]) -> bool:
        """Does detection di's descriptor crop (its box grown 1.3x) take in part of another detection?"""
        b = boxes[di]
        grown = np.array([b[0] - 0.15 * b[2], b[1] - 0.15 * b[3], 1.3 * b[2], 1.3 * b[3]])
        return any(_inter(grown, o) > 0 for k, o in enumerate(boxes) if k != di)

    def _bridge(self, lt: _Live, f: int, box: np.ndarray) -> None:
        gap = f - lt.last_frame
        for k in range(1, gap):
            a = k / gap
            self._add_box(lt, lt.last_frame + k, lt.last_det * (1 - a) + box * a, False, key=False)

    def _extend(self, lt: _Live, f: int, image: np.ndarray, d: Detection, look: np.ndarray) -> None:
        box = np.array([d.x, d.y, d.w, d.h])
        gap = f - lt.last_frame
        for k in range(1, gap):  # linear interpolation through the missed frames
            a = k / gap
            self._add_box(lt, lt.last_frame + k, lt.last_det * (1 - a) + box * a, False)
        self._add_box(lt, f, box, True)
        lt.velocity = (box - lt.last_det) / gap
        if lt.hits == 1:
            # The boxes held before the first detection stand where the face was first found; a face too faint for
            # the detector there may have been elsewhere: obfuscate where its motion says it came from, too.
            for k in range(1, self.cfg.hold + 1):
                self._add_moved(lt, lt.last_frame - k, lt.last_det, lt.velocity, -k)
        lt.last_det, lt.last_frame, lt.last_time = box, f, self._times[f]
        lt.looks = lt.looks[1 - _LOOKS :] + [look]
        lt.hits += 1
        self._consider(lt, f, image, d)

    def _start(self, f: int, image: np.ndarray, d: Detection, look: np.ndarray, key_from: int) -> _Live:
        box = np.array([d.x, d.y, d.w, d.h])
        lt = _Live(self._next_id, [], [], [], box, f, self._times[f], [look], key_from)
        self._next_id += 1
        self._add_box(lt, f, box, True)
        for k in range(1, self.cfg.hold + 1):  # hold the first box a little before the first detection
            self._add_box(lt, f - k, box, False, front=True)
            if max(box[2], box[3]) <= _SMALL_FACE:
                # A small (far) face crosses its own width in a frame or two, and one this faint may not have
                # been detected where it was: before its first detection obfuscate, not key, a box grown by k face
                # sizes a side (a 10 px face: 50 px two frames back). The motion, once known, adds the box there.
                self._add_box(lt, f - k, _grown(box, k), False, key=False)
        self._live.append(lt)
        self._consider(lt, f, image, d)
        return lt

    def _consider(self, lt: _Live, f: int, image: np.ndarray, d: Detection) -> None:
        if f < lt.key_from or (lt.ended_at is not None and f >= lt.ended_at):
            return  # not in the key (e.g. a blend inside a gradual transition): never its best crop
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
        lt.bests.append(lt.best)
        horizon = f - (self.cfg.cuts.gradual_window if self.cfg.cuts is not None else 0) - 1
        while len(lt.bests) > 1 and lt.bests[1][1] < horizon:  # older ones can no longer be dated back past
            del lt.bests[0]

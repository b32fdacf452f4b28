"""Measure how well an obfuscated video hides its faces: detectors and a face matcher re-run on the output.

`verify_video(ORIGINAL, OBFUSCATED)` reads both videos frame by frame (they must have the same frames) and

1. **regions**: the rectangles the indexer obfuscated, i.e. every track box grown by the obfuscation margin.
   They are recomputed by running the indexer's own detector and tracker on the original (deterministic: the
   same settings give the same boxes, short tracks included), or read from key records (`read_keys_jsonl`,
   the JSON lines `facekeys get` prints: `track_id` and `boxes` rows `frame, x, y, w, h`).
2. **detector hits in regions**: on the OBFUSCATED frames, CenterFace at a low threshold (0.3; the indexer
   detects at 0.4, CenterFace's class default is 0.5) and dlib's HOG detector over the whole frame, and on a
   crop around every region rescaled so the face is `crop_face_px` wide (so HOG, which needs ~80 px faces,
   and CenterFace see small faces at a scale they work at); dlib's MMOD CNN on such crops every `cnn_every`
   frames of a track (it costs ~0.5 s a crop on a CPU). A hit that lies at least half in a region is a
   region hit; criterion: none. CenterFace's region hits are also counted at 0.2, 0.3, 0.4 and 0.5
   (`centerface_hits_at`), with the highest score seen in a region (the headroom).
3. **leaked frames**: faces of the ORIGINAL (CenterFace at the reference threshold, 0.4 = the indexer's own
   notion of a face, plus dlib HOG) that one of the detectors above still finds on the obfuscated frame at
   the same place (IoU >= 0.3), inside a region (the obfuscation is too weak) or outside every region (the
   indexer missed the face). Criterion: no such frame. Output hits outside regions that match no face of the
   original are reported but judged by no criterion (background false positives at the low threshold, or
   faces no reference detector sees either).
4. **re-identification**: dlib's 128-D descriptor, closed-set nearest-photo identification. People are the
   tracks, merged when they never share a frame and their original descriptors are within dlib's
   same-person distance (0.6), so a person split over several tracks is not scored against themself. For up
   to `reid_per_track` frames of each track the attacker gets the landmarks of the ORIGINAL face (the best
   alignment an attacker could hope for), takes the aligned chip from the obfuscated frame and picks the
   nearest person: the one whose mean original descriptor (over the same sampled frames) is closest. Every
   person gets the same number of probes (as many as the rarest has), so chance is exactly 1 / people for
   any guess that does not depend on who is shown. Criterion: the number of correct identifications is not significantly above chance: a
   one-sided binomial test at `alpha` (1 %), treating the probes as independent. Probes of one track are
   correlated, which makes the test stricter than its nominal level (it reports re-identification sooner):
   the safe side for a privacy check. With one person in the clip there is nothing to tell apart and the test
   is not run. The same attack on the original faces (leave-one-out) is reported as `original_rate`: the
   attack's ceiling on this clip; a ceiling near chance means the faces are too small for the matcher and
   the test has little power there. Distractor photos from elsewhere are deliberately not used: their
   resolution and context differ from the clip's, and a matcher then picks the in-clip person for any
   probe, faces filled black included (measured), which says nothing about the obfuscation.

Costs: two CenterFace passes and two HOG passes per frame pair, a few CenterFace/HOG runs on small crops per
region, MMOD on a few crops per track and ~30 ms per described face: roughly 0.3-0.6 s per VGA frame pair on
two CPU cores.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facekeys.errors import InvalidArgument

from .detect import DetectorConfig, make_detector
from .obfuscate import ObfuscationConfig, expand_box
from .track import Tracker, TrackerConfig
from .video import VideoReader

__all__ = [
    "VerifyConfig",
    "Hit",
    "Leak",
    "ReidResult",
    "PrivacyReport",
    "TrackBoxes",
    "verify_video",
    "read_keys_jsonl",
    "tracks_to_boxes",
    "binomial_sf",
]

REPORT_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)  # CenterFace region hits are reported at each of these

# A track's obfuscated boxes: track id -> ((frame, x, y, w, h), ...) and optionally which were detections.
TrackBoxes = Mapping[int, Sequence[Sequence[float]]]


@dataclass(frozen=True)
class VerifyConfig:
    centerface_threshold: float = 0.3  # CenterFace on the obfuscated video: a hit at >= this fails
    observe_threshold: float = 0.1  # CenterFace runs at this to report the headroom (max score in regions)
    reference_threshold: float = 0.4  # CenterFace on the original: a face (the indexer's own threshold)
    detector: DetectorConfig = DetectorConfig()  # the indexer's detection settings (upscale, tiles, threshold)
    tracker: TrackerConfig = TrackerConfig()  # the indexer's tracker settings (regions are recomputed with them)
    margin: float = ObfuscationConfig.margin  # the indexer's obfuscation margin: region = box grown by it
    hog: bool = True  # dlib HOG on whole frames (both videos) and on region crops
    hog_threshold: float = 0.0  # added to HOG's SVM threshold (0 = dlib's default; negative = more hits)
    crop_face_px: int = 120  # region crops are scaled (up only) so the face box is this wide (HOG needs ~80)
    crop_context: float = 0.5  # crop = region grown by this fraction of its size on every side
    crop_every: int = 1  # check the crops of every region every this many frames (1 = all)
    cnn_every: int = 25  # MMOD CNN on a track's region crop every this many of its frames (0 = never)
    cnn_face_px: int = 100  # face width in MMOD's crops (it needs ~80 px)
    match_iou: float = 0.3  # an output hit at IoU >= this with a face of the original is that face, leaked
    reid_per_track: int = 8  # obfuscated faces per track in the re-identification test (0 = no test)
    alpha: float = 0.01  # re-identification fails when P(>= that many correct | chance) < alpha

    def __post_init__(self):
        for name in ("centerface_threshold", "observe_threshold", "reference_threshold", "alpha"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise InvalidArgument(f"VerifyConfig.{name} must be in (0, 1), got {v}")
        if self.observe_threshold > self.centerface_threshold:
            raise InvalidArgument("VerifyConfig.observe_threshold must be <= centerface_threshold")
        if not isinstance(self.detector, DetectorConfig) or not isinstance(self.tracker, TrackerConfig):
            raise InvalidArgument("VerifyConfig.detector / tracker must be a DetectorConfig / TrackerConfig")
        if not 0.0 <= self.margin <= 2.0:
            raise InvalidArgument(f"VerifyConfig.margin must be in [0, 2], got {self.margin}")
        if not 16 <= self.crop_face_px <= 512 or not 16 <= self.cnn_face_px <= 512:
            raise InvalidArgument("VerifyConfig.crop_face_px / cnn_face_px must be in 16..512 px")
        if not 0.0 <= self.crop_context <= 2.0:
            raise InvalidArgument(f"VerifyConfig.crop_context must be in [0, 2], got {self.crop_context}")
        if self.crop_every < 0 or self.cnn_every < 0 or self.reid_per_track < 0:
            raise InvalidArgument("VerifyConfig.crop_every / cnn_every / reid_per_track must be >= 0")
        if not 0.0 < self.match_iou <= 1.0:
            raise InvalidArgument(f"VerifyConfig.match_iou must be in (0, 1], got {self.match_iou}")
        if not -2.0 <= self.hog_threshold <= 2.0:
            raise InvalidArgument(f"VerifyConfig.hog_threshold must be in [-2, 2], got {self.hog_threshold}")


@dataclass(frozen=True)
class Hit:
    """A detection on the obfuscated video."""

    frame: int
    detector: str  # "centerface", "hog" (whole frame) or "centerface-crop", "hog-crop", "cnn-crop"
    box: tuple[float, float, float, float]  # x, y, w, h in frame pixels
    score: float
    track_id: int | None  # the region it falls in; None = outside every region


@dataclass(frozen=True)
class Leak:
    """A face of the original still found on the obfuscated frame."""

    frame: int
    box: tuple[float, float, float, float]  # the face on the original (x, y, w, h)
    found_by: str  # reference detector on the original: "centerface" or "hog"
    seen_by: str  # detector that still finds it on the output
    in_region: bool


@dataclass(frozen=True)
class ReidResult:
    probes: int  # obfuscated faces tested
    correct: int  # nearest gallery entry was the probe's own person
    people: int  # people in the clip (tracks merged by identity): the gallery
    chance: float  # 1 / people
    p_value: float  # P(X >= correct), X ~ Binomial(probes, chance)
    original_probes: int  # the same attack on the originals, leave-one-out (the attack's ceiling)
    original_correct: int
    alpha: float

    @property
    def rate(self) -> float:
        return self.correct / self.probes if self.probes else 0.0

    @property
    def original_rate(self) -> float:
        return self.original_correct / self.original_probes if self.original_probes else 0.0

    @property
    def better_than_chance(self) -> bool:
        return self.probes > 0 and self.people > 1 and self.p_value < self.alpha

    @property
    def allowed(self) -> int:
        """The most correct identifications chance explains at `alpha` (the pass limit)."""
        if self.probes == 0 or self.people < 2:
            return self.probes
        k = 0
        while k <= self.probes and binomial_sf(k, self.probes, self.chance) >= self.alpha:
            k += 1
        return k - 1


@dataclass
class PrivacyReport:
    original: str
    obfuscated: str
    config: VerifyConfig
    frames: int = 0
    tracks: int = 0
    region_boxes: int = 0  # (frame, region) pairs checked
    reference_faces: int = 0  # faces found on the original (all frames)
    region_hits: list[Hit] = field(default_factory=list)
    outside_hits: list[Hit] = field(default_factory=list)  # matching no face of the original
    leaks: list[Leak] = field(default_factory=list)
    reid: ReidResult | None = None
    max_region_score: float = 0.0  # highest CenterFace score (>= observe_threshold) in a region: the headroom
    region_scores: list[tuple[int, float]] = field(default_factory=list)  # (frame, score): CenterFace in regions
    #                                                                       at >= observe_threshold, whole frame and crops

    def centerface_hits_at(self, threshold: float) -> tuple[int, int]:
        """(detections, frames) of CenterFace at >= `threshold` in obfuscated regions (threshold >=
        observe_threshold): the figures at other thresholds than the pass level."""
        got = [f for f, s in self.region_scores if s >= threshold]
        return len(got), len(set(got))

    @property
    def leaked_frames(self) -> list[int]:
        return sorted({lk.frame for lk in self.leaks})

    def region_hit_count(self, detector: str | None = None, min_score: float | None = None) -> int:
        return sum(1 for h in self.region_hits
                   if (detector is None or h.detector.startswith(detector)) and (min_score is None or h.score >= min_score))

    def failures(self) -> list[str]:
        """One line per failed criterion (empty: the video passes)."""
        out = []
        thr = self.config.centerface_threshold
        for det, label in (("centerface", f"CenterFace hit(s) >= {thr}"), ("hog", "dlib HOG hit(s)"),
                           ("cnn", "dlib MMOD CNN hit(s)")):
            hits = [h for h in self.region_hits if h.detector.startswith(det)]
            if hits:
                out.append(f"{len(hits)} {label} in obfuscated regions ({_frames(h.frame for h in hits)})")
        if self.leaks:
            inside = sorted({lk.frame for lk in self.leaks if lk.in_region})
            outside = sorted({lk.frame for lk in self.leaks if not lk.in_region})
            out.append(f"{len(self.leaked_frames)} leaked frame(s): a face of the original is still found "
                       f"(inside regions: {len(inside)} frames {_frames(inside)}; outside: {len(outside)} {_frames(outside)})")
        r = self.reid
        if r is not None and r.better_than_chance:
            out.append(f"re-identification better than chance: {r.correct}/{r.probes} correct = {r.rate:.1%} vs chance "
                       f"{r.chance:.1%} (1/{r.people}; p = {r.p_value:.2g} < {r.alpha}; chance allows {r.allowed})")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_json(self) -> dict:
        def hit(h: Hit):
            return {"frame": h.frame, "detector": h.detector, "box": [round(v, 1) for v in h.box],
                    "score": round(h.score, 4), "track_id": h.track_id}

        r = self.reid
        return {
            "original": self.original, "obfuscated": self.obfuscated, "passed": self.passed,
            "failures": self.failures(), "frames": self.frames, "tracks": self.tracks,
            "region_boxes": self.region_boxes, "reference_faces": self.reference_faces,
            "max_region_score": round(self.max_region_score, 4),
            "centerface_region_hits_at": {f"{t:.1f}": dict(zip(("hits", "frames"), self.centerface_hits_at(t)))
                                          for t in REPORT_THRESHOLDS if t >= self.config.observe_threshold},
            "region_hits": [hit(h) for h in self.region_hits],
            "outside_hits": [hit(h) for h in self.outside_hits],
            "leaked_frames": self.leaked_frames,
            "leaks": [{**asdict(lk), "box": [round(v, 1) for v in lk.box]} for lk in self.leaks],
            "reid": None if r is None else {
                "probes": r.probes, "correct": r.correct, "rate": r.rate, "people": r.people,
                "chance": r.chance, "p_value": r.p_value, "allowed": r.allowed, "alpha": r.alpha,
                "better_than_chance": r.better_than_chance, "original_probes": r.original_probes,
                "original_correct": r.original_correct, "original_rate": r.original_rate},
            "config": {"centerface_threshold": self.config.centerface_threshold,
                       "reference_threshold": self.config.reference_threshold, "margin": self.config.margin,
                       "hog": self.config.hog, "hog_threshold": self.config.hog_threshold,
                       "cnn_every": self.config.cnn_every, "reid_per_track": self.config.reid_per_track},
        }

    def summary(self) -> str:
        thr = self.config.centerface_threshold
        lines = [
            f"{self.obfuscated}: {self.frames} frames, {self.tracks} tracks, {self.region_boxes} obfuscated boxes, "
            f"{self.reference_faces} faces on the original",
            f"  hits in regions: CenterFace >= {thr}: {self.region_hit_count('centerface')}, "
            f"dlib HOG: {self.region_hit_count('hog')}, dlib MMOD CNN: {self.region_hit_count('cnn')}; "
            f"highest CenterFace score in a region: {self.max_region_score:.2f}",
            "  CenterFace in regions at " + ", ".join(
                f">= {t:.1f}: {h} hits / {n} frames" for t in REPORT_THRESHOLDS if t >= self.config.observe_threshold
                for h, n in [self.centerface_hits_at(t)]),
            f"  leaked frames: {len(self.leaked_frames)} (inside regions {len({lk.frame for lk in self.leaks if lk.in_region})}, "
            f"outside {len({lk.frame for lk in self.leaks if not lk.in_region})}); "
            f"other hits outside regions (no face of the original there): {len(self.outside_hits)}",
        ]
        r = self.reid
        if r is None:
            lines.append("  re-identification: not run")
        elif r.probes == 0:
            lines.append("  re-identification: no faces to test")
        elif r.people < 2:
            lines.append(f"  re-identification: not measurable (one person in the clip, {r.probes} faces)")
        else:
            lines.append(
                f"  re-identification: {r.correct}/{r.probes} = {r.rate:.1%} vs chance {r.chance:.1%} "
                f"(1/{r.people} people; p = {r.p_value:.3g}, chance allows "
                f"{r.allowed}); originals, leave-one-out: {r.original_correct}/{r.original_probes} = {r.original_rate:.1%}")
        fails = self.failures()
        lines.append("  PASS" if not fails else "  FAIL: " + "; ".join(fails))
        return "\n".join(lines)


def _frames(frames: Iterable[int], limit: int = 8) -> str:
    fs = sorted(set(frames))
    s = ", ".join(str(f) for f in fs[:limit])
    return f"frames {s}{', ...' if len(fs) > limit else ''}"


# -- statistics ----------------------------------------------------------------------------------------------
def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact (log-space sum)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
             for i in range(k, n + 1)]
    m = max(terms)
    return float(min(1.0, math.exp(m) * sum(math.exp(t - m) for t in terms)))


# -- inputs --------------------------------------------------------------------------------------------------
def read_keys_jsonl(path: str | os.PathLike) -> dict[int, list[tuple[int, int, int, int, int]]]:
    """Track boxes from JSON lines with `boxes` ([[frame, x, y, w, h], ...]) and optionally `track_id` (what
    `facekeys get KEY` prints, one key per line). Lines without a track id get their line number."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"cannot read keys file {str(p)!r}: {e}") from None
    out: dict[int, list] = {}
    names: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            boxes = np.asarray(rec["boxes"], dtype=np.float64)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InvalidArgument(f"{p}:{n}: want a JSON object with boxes [[frame, x, y, w, h], ...] ({e})") from None
        if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 5 or not np.isfinite(boxes).all()):
            raise InvalidArgument(f"{p}:{n}: boxes must be rows of frame, x, y, w, h; got shape {boxes.shape}")
        name = str(rec.get("track_id", f"line-{n}"))
        tid = names.setdefault(name, len(names))
        out.setdefault(tid, []).extend(tuple(int(round(v)) for v in row) for row in boxes)
    if not out:
        raise InvalidArgument(f"keys file {str(p)!r} holds no boxes")
    return out


def tracks_to_boxes(tracks: Iterable) -> dict[int, list[tuple[int, int, int, int, int]]]:
    """`Track`s (as `obfuscate_video` returns them) -> {track_id: [(frame, x, y, w, h), ...]}."""
    out: dict[int, list] = {}
    for t in tracks:
        out.setdefault(int(t.track_id), []).extend(tuple(int(v) for v in b) for b in t.boxes)
    return out


def _identity():
    from facekeys.identity import load

    return load()


# -- geometry ------------------------------------------------------------------------------------------------
def _iou_xywh(a, b) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _in_region(box, region) -> bool:
    """At least half of box (x, y, w, h) lies in region (x0, y0, x1, y1): the hit is on obfuscated pixels.
    A face found mostly outside (a region that lags a moving face) is a coverage miss, not a weak
    obfuscation: it counts as a hit outside regions (and as a leak when the original shows a face there)."""
    x, y, w, h = box
    x0, y0, x1, y1 = region
    iw = min(x + w, x1) - max(x, x0)
    ih = min(y + h, y1) - max(y, y0)
    return iw > 0 and ih > 0 and iw * ih >= 0.5 * w * h


@dataclass
class _FrameWork:
    index: int
    obf: np.ndarray  # (H, W, 3) uint8, the obfuscated frame
    out_dets: list  # [(detector, (x, y, w, h), score)] whole-frame detections on the obfuscated frame
    ref_faces: list  # [(detector, (x, y, w, h))] faces on the original


class _Verifier:
    def __init__(self, cfg: VerifyConfig, identity):
        self.cfg = cfg
        base = cfg.detector
        self.indexer_threshold = base.threshold
        lo = min(base.threshold, cfg.reference_threshold)
        # replace() keeps every other setting (upscale, tiles, model) of the indexer's detector
        from dataclasses import replace

        self.orig_det = make_detector(replace(base, threshold=lo))
        self.out_det = make_detector(replace(base, threshold=cfg.observe_threshold))
        self.crop_det = make_detector(replace(base, threshold=cfg.observe_threshold, upscale=1.0, tiles=(1, 1)))
        self.max_region_score = 0.0
        self.region_scores: list[tuple[int, float]] = []
        self.identity = identity
        self.report_hits: list[Hit] = []
        self.outside: list[Hit] = []
        self.leaks: list[Leak] = []
        self.cnn_last: dict[int, int] = {}
        self.region_boxes = 0
        self.reference_faces = 0

    # whole-frame detections
    def detect_original(self, img):
        dets = self.orig_det.detect(img)
        for_tracker = [d for d in dets if d.score >= self.indexer_threshold]
        ref = [("centerface", (d.x, d.y, d.w, d.h)) for d in dets if d.score >= self.cfg.reference_threshold]
        if self.cfg.hog:
            boxes, _ = self.identity.detect_hog(img, 0, self.cfg.hog_threshold)
            ref += [("hog", tuple(float(v) for v in b)) for b in boxes]
        return for_tracker, ref

    def detect_output(self, img):
        out = [("centerface", (d.x, d.y, d.w, d.h), d.score) for d in self.out_det.detect(img)]
        if self.cfg.hog:
            boxes, scores = self.identity.detect_hog(img, 0, self.cfg.hog_threshold)
            out += [("hog", tuple(float(v) for v in b), float(s)) for b, s in zip(boxes, scores)]
        return out

    def _crop(self, img, region, face_w, face_px):
        H, W = img.shape[:2]
        x0, y0, x1, y1 = region
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        hw, hh = (x1 - x0) * (0.5 + self.cfg.crop_context), (y1 - y0) * (0.5 + self.cfg.crop_context)
        a0, b0 = max(0, int(cx - hw)), max(0, int(cy - hh))
        a1, b1 = min(W, int(math.ceil(cx + hw))), min(H, int(math.ceil(cy + hh)))
        if a1 - a0 < 2 or b1 - b0 < 2:
            return None, 1.0, (0, 0)
        s = min(8.0, max(1.0, face_px / max(face_w, 1.0)))
        crop = img[b0:b1, a0:a1]
        if s != 1.0:
            crop = cv2.resize(crop, (max(1, round((a1 - a0) * s)), max(1, round((b1 - b0) * s))), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(crop), s, (a0, b0)

    def crop_hits(self, fw: _FrameWork, regions):
        """Detections on rescaled crops around each region, kept when they fall in that region."""
        cfg = self.cfg
        out = []
        for tid, box, region in regions:
            checks = []
            if cfg.crop_every and fw.index % cfg.crop_every == 0:
                crop, s, off = self._crop(fw.obf, region, box[2], cfg.crop_face_px)
                if crop is not None:
                    checks.append(("centerface-crop", crop, s, off))
                    if cfg.hog:
                        checks.append(("hog-crop", crop, s, off))
            last = self.cnn_last.get(tid)
            if cfg.cnn_every and (last is None or fw.index - last >= cfg.cnn_every):
                crop, s, off = self._crop(fw.obf, region, box[2], cfg.cnn_face_px)
                if crop is not None:
                    self.cnn_last[tid] = fw.index
                    checks.append(("cnn-crop", crop, s, off))
            for name, crop, s, (ox, oy) in checks:
                if name == "centerface-crop":
                    found = [((d.x, d.y, d.w, d.h), d.score) for d in self.crop_det.detect(crop)]
                elif name == "hog-crop":
                    b, sc = self.identity.detect_hog(crop, 0, cfg.hog_threshold)
                    found = list(zip(b.tolist(), sc.tolist()))
                else:
                    b, sc = self.identity.detect_cnn(crop)
                    found = list(zip(b.tolist(), sc.tolist()))
                for (x, y, w, h), score in found:
                    fb = (x / s + ox, y / s + oy, w / s, h / s)
                    if _in_region(fb, region):
                        out.append((name, fb, float(score), tid))
        return out

    def judge(self, fw: _FrameWork, boxes: list) -> None:
        H, W = fw.obf.shape[:2]
        regions = []
        for tid, x, y, w, h in boxes:
            regions.append((tid, (x, y, w, h), expand_box((x, y, w, h), self.cfg.margin, W, H)))
        self.region_boxes += len(regions)
        self.reference_faces += len(fw.ref_faces)
        seen = []  # (detector, box, score, track or None)
        for name, box, score in fw.out_dets:
            tid = next((t for t, _, r in regions if _in_region(box, r)), None)
            seen.append((name, box, score, tid))
        seen += self.crop_hits(fw, regions)
        thr = self.cfg.centerface_threshold
        observed = [x for x in seen if x[0].startswith("centerface") and x[3] is not None]
        self.max_region_score = max([self.max_region_score] + [x[2] for x in observed])
        self.region_scores += [(fw.index, x[2]) for x in observed]
        seen = [x for x in seen if not x[0].startswith("centerface") or x[2] >= thr]
        for name, box, score, tid in seen:
            hit = Hit(fw.index, name, tuple(float(v) for v in box), score, tid)
            if tid is not None:
                self.report_hits.append(hit)
            elif not any(_iou_xywh(box, rb) >= self.cfg.match_iou for _, rb in fw.ref_faces):
                self.outside.append(hit)
        for found_by, rb in fw.ref_faces:
            for name, box, _, _ in seen:
                if _iou_xywh(box, rb) >= self.cfg.match_iou:
                    in_region = any(_in_region(rb, r) for _, _, r in regions)
                    self.leaks.append(Leak(fw.index, tuple(float(v) for v in rb), found_by, name, in_region))
                    break


def verify_video(
    original: str | os.PathLike,
    obfuscated: str | os.PathLike,
    cfg: VerifyConfig = VerifyConfig(),
    *,
    tracks: TrackBoxes | None = None,
    identity=None,
    on_frame: Callable[[int], None] | None = None,
) -> PrivacyReport:
    """Judge `obfuscated` (the indexer's output for `original`); see the module doc for what is measured.

    `tracks`: {track_id: [(frame, x, y, w, h), ...]} of the obfuscated boxes (`tracks_to_boxes`,
    `read_keys_jsonl`); None = recompute them with `cfg.detector` and `cfg.tracker` on the original.
    `identity`: a `facekeys.identity.DlibFaceModel` (default: the shared one). Raises InvalidArgument for
    unreadable videos or videos whose frames do not correspond (different count or size).
    """
    if not isinstance(cfg, VerifyConfig):
        raise InvalidArgument(f"cfg must be a VerifyConfig, got {type(cfg).__name__}")
    needs_dlib = cfg.hog or cfg.cnn_every or cfg.reid_per_track
    identity = identity if identity is not None or not needs_dlib else _identity()
    v = _Verifier(cfg, identity)

    given = None
    if tracks is not None:
        given = {}
        for tid, boxes in tracks.items():
            for b in boxes:
                if len(b) != 5:
                    raise InvalidArgument(f"track {tid}: boxes must be (frame, x, y, w, h), got {b}")
                f, x, y, w, h = (int(round(float(c))) for c in b)
                if w > 0 and h > 0:
                    given.setdefault(f, []).append((int(tid), x, y, w, h))
    tracker = Tracker(cfg.tracker) if given is None else None
    lookahead = tracker.lookahead if tracker is not None else 0
    track_frames: dict[int, list[tuple[int, tuple[int, int, int, int]]]] = {}  # tid -> [(frame, box)]
    detected: set[tuple[int, int]] = set()  # (track_id, frame) with a detector box (recomputed tracks)
    report = PrivacyReport(str(original), str(obfuscated), cfg)

    def boxes_for(f: int):
        return given.get(f, []) if given is not None else tracker.pop_boxes(f)

    def note_tracks(ended):
        for t in ended:
            detected.update((t.track_id, b[0]) for b, d in zip(t.boxes, t.detected) if d)

    buffer: deque[_FrameWork] = deque()

    def release(upto: float) -> None:
        while buffer and buffer[0].index <= upto:
            fw = buffer.popleft()
            bx = boxes_for(fw.index)
            for tid, x, y, w, h in bx:
                track_frames.setdefault(tid, []).append((fw.index, (x, y, w, h)))
            v.judge(fw, bx)

    with VideoReader(original) as ra, VideoReader(obfuscated) as rb:
        fa, fb = ra.frames(), rb.frames()
        n = 0
        while True:
            a, b = next(fa, None), next(fb, None)
            if a is None or b is None:
                if a is not None or b is not None:
                    longer = original if a is not None else obfuscated
                    raise InvalidArgument(f"the videos differ in length: {longer} has more than {n} frames")
                break
            if a.image.shape != b.image.shape:
                raise InvalidArgument(f"frame {n}: original is {a.image.shape[1]}x{a.image.shape[0]}, "
                                      f"obfuscated {b.image.shape[1]}x{b.image.shape[0]}")
            dets, ref = v.detect_original(a.image)
            if tracker is not None:
                note_tracks(tracker.update(a.index, a.time, a.image, dets))
            buffer.append(_FrameWork(a.index, b.image, v.detect_output(b.image), ref))
            release(a.index - lookahead)
            if on_frame is not None:
                on_frame(n)
            n += 1
        if tracker is not None:
            note_tracks(tracker.finish())
        release(float("inf"))
    report.frames = n
    report.tracks = len(track_frames)
    report.region_boxes, report.reference_faces = v.region_boxes, v.reference_faces
    report.region_hits, report.outside_hits, report.leaks = v.report_hits, v.outside, v.leaks
    report.max_region_score, report.region_scores = v.max_region_score, v.region_scores
    if cfg.reid_per_track:
        prefer = detected if tracker is not None else None
        report.reid = _reidentify(original, obfuscated, track_frames, prefer, cfg, identity)
    return report


# -- re-identification ---------------------------------------------------------------------------------------
def _sample(frames: list, k: int, prefer: set | None, tid: int) -> list:
    pool = [fb for fb in frames if prefer is None or (tid, fb[0]) in prefer] or frames
    if len(pool) <= k:
        return pool
    idx = np.linspace(0, len(pool) - 1, k).round().astype(int)
    return [pool[i] for i in sorted(set(idx.tolist()))]


def _people(tids: list[int], orig: dict[int, np.ndarray], frames: dict[int, set]) -> dict[int, int]:
    """Union tracks that never share a frame and whose mean original descriptors are < 0.6 apart."""
    from facekeys.identity import SAME_PERSON_DISTANCE, distances

    parent = {t: t for t in tids}

    def root(t):
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    means = {t: orig[t].mean(0) for t in tids}
    for i, a in enumerate(tids):
        for b in tids[i + 1:]:
            if frames[a] & frames[b]:
                continue
            if distances(means[a], means[b])[0, 0] < SAME_PERSON_DISTANCE:
                ra, rb = root(a), root(b)
                if ra != rb:
                    # only merge whole groups that never co-occur
                    ga = {t for t in tids if root(t) == ra}
                    gb = {t for t in tids if root(t) == rb}
                    if not any(frames[x] & frames[y] for x in ga for y in gb):
                        parent[rb] = ra
    roots = sorted({root(t) for t in tids})
    return {t: roots.index(root(t)) for t in tids}


def _reidentify(original, obfuscated, track_frames, prefer, cfg: VerifyConfig, identity) -> ReidResult:
    from facekeys.identity import distances

    wanted: dict[int, list[tuple[int, tuple]]] = {}  # frame -> [(tid, box)]
    for tid, frames in track_frames.items():
        for f, box in _sample(frames, cfg.reid_per_track, prefer, tid):
            wanted.setdefault(f, []).append((tid, box))
    orig_chips, obf_chips, labels = [], [], []
    if wanted:
        last = max(wanted)
        with VideoReader(original) as ra, VideoReader(obfuscated) as rb:
            for a, b in zip(ra.frames(), rb.frames()):
                if a.index in wanted:
                    items = wanted[a.index]
                    boxes = np.array([bx for _, bx in items], np.float64)  # (n, 4)
                    marks = identity.landmarks5(a.image, boxes)  # (n, 5, 2) on the ORIGINAL: best alignment
                    orig_chips.append(identity.chips(a.image, marks))
                    obf_chips.append(identity.chips(b.image, marks))
                    labels += [tid for tid, _ in items]
                if a.index >= last:
                    break
    if not labels:
        return ReidResult(0, 0, 0, 1.0, 1.0, 0, 0, cfg.alpha)
    d_orig = identity.describe_chips(np.concatenate(orig_chips))  # (n, 128)
    d_obf = identity.describe_chips(np.concatenate(obf_chips))  # (n, 128)
    labels = np.asarray(labels)
    tids = sorted(set(labels.tolist()))
    per_track = {t: d_orig[labels == t] for t in tids}
    frames = {t: {f for f, _ in track_frames[t]} for t in tids}
    person_of = _people(tids, per_track, frames)
    person = np.array([person_of[t] for t in labels])  # (n,)
    P = max(person_of.values()) + 1
    means = np.stack([d_orig[person == p].mean(0) for p in range(P)])  # (P, 128)
    # Probes: the same number per person, so chance is 1/P for every guess that ignores who it is (with
    # unequal shares, always naming the person with most probes would beat 1/P without seeing anything).
    probes = _balanced(person, P)  # (m,) indices
    nearest = distances(d_obf[probes], means).argmin(1)  # (m,)
    correct = int((nearest == person[probes]).sum())
    # ceiling: the originals against the gallery with their own sample left out of their person's mean
    o_n = o_ok = 0
    sums = np.stack([d_orig[person == p].sum(0) for p in range(P)])  # (P, 128)
    counts = np.bincount(person, minlength=P)
    for i in probes:
        p = person[i]
        if counts[p] < 2 or P < 2:
            continue
        e = means.copy()
        e[p] = (sums[p] - d_orig[i]) / (counts[p] - 1)
        o_n += 1
        o_ok += int(distances(d_orig[i], e)[0].argmin() == p)
    chance = 1.0 / P
    m = len(probes)
    return ReidResult(m, correct, P, chance, binomial_sf(correct, m, chance), o_n, o_ok, cfg.alpha)


def _balanced(person: np.ndarray, people: int) -> np.ndarray:
    """Indices of `person` (n,) keeping the same number for each of `people`: as many as the rarest has,
    spread evenly over each person's samples (deterministic)."""
    groups = [np.flatnonzero(person == p) for p in range(people)]
    k = min(len(g) for g in groups)
    keep = [g[np.linspace(0, len(g) - 1, k).round().astype(int)] if len(g) > k else g for g in groups]
    return np.sort(np.concatenate(keep))

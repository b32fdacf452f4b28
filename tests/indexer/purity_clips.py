"""Clips where we know who is where, for track purity (tests/indexer/test_track_purity.py and
benchmarks/bench_tracking.py). Real faces from tests/realmedia.py: the face_recognition photos (Obama, Biden),
insightface's group photo t1.jpg (six people, one lighting), Grace Hopper; opencv-doc's home.jpg as a
face-free background; opencv-doc's Megamind.avi as it is.

Ground truth is per pixel: each clip knows, for every frame, which person's face is visible where (heads are
pasted back to front, so a face passing behind another is hidden by it). `Clip.shown(frame, box)` is the
person whose visible face pixels fill most of a box, or None when less than a quarter of the box is face.
Megamind.avi has no such map: see `megamind`.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

import realmedia

W, H = 320, 240  # synthetic clips' frame size


@dataclass(frozen=True, eq=False)
class Clip:
    name: str
    frames: list  # [(H, W, 3) uint8 RGB]
    cuts: tuple[int, ...]  # frames that start a new shot (ground truth)
    shown: Callable[[int, tuple], str | None]  # (frame, (x, y, w, h)) -> person the box shows, or None
    exact: bool = True  # False: `shown` is only right for detector boxes (held/interpolated ones: shot only)
    maps: list | None = None  # [(H, W) uint8]: 0 = no visible face, k = the k-th person's visible face
    people: tuple[str, ...] = ()  # label k of `maps` is person people[k - 1] (one person may have two labels)
    extras: frozenset = frozenset()  # labels k for purity only, not judged obfuscated (t1's neighbours: cut off
    # at the frame edge, where the detector misses some)

    def shot(self, frame: int) -> int:
        return bisect.bisect_right(self.cuts, frame)

    def visible_faces(self, frame: int) -> list[tuple[int, int, int, int]]:
        """Bounding boxes (x, y, w, h) of the faces visible in a frame (synthetic clips only; not `extras`)."""
        m = self.maps[frame]
        out = []
        for k in np.unique(m[m > 0]):
            if k in self.extras:
                continue
            ys, xs = np.nonzero(m == k)
            out.append((int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)))
        return out


def _label_clip(name: str, frames: list, people: list[str], maps: list[np.ndarray], cuts=(), extras=()) -> Clip:
    """maps[i] (H, W) uint8: 0 = no visible face, k = people[k - 1]'s face."""

    def shown(f: int, box) -> str | None:
        x, y, w, h = (int(round(v)) for v in box[:4])
        m = maps[f][max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)]
        counts = np.bincount(m.ravel(), minlength=len(people) + 1)[1:]
        if m.size == 0 or counts.max() < 0.25 * max(1, w * h):
            return None
        return people[int(counts.argmax())]

    return Clip(name, frames, tuple(cuts), shown, maps=maps, people=tuple(people), extras=frozenset(extras))


@dataclass(frozen=True, eq=False)
class Face:
    name: str
    image: np.ndarray  # (h, w, 3) uint8 RGB source photo
    box: tuple[float, float, float, float]  # its face box in the photo (CenterFace, threshold 0.4)


@functools.lru_cache(maxsize=None)
def faces() -> dict[str, Face]:
    """The real faces the synthetic clips use, each with the box the indexer's detector finds on the photo."""
    from facekeys.indexer.detect import make_detector

    det = make_detector()
    fr = realmedia.face_recognition_images()
    t1 = realmedia.read_rgb(realmedia.insightface_images()["t1.jpg"])
    photos = {"obama": realmedia.read_rgb(fr["obama.jpg"]), "biden": realmedia.read_rgb(fr["biden.jpg"]),
              "grace": realmedia.read_rgb(realmedia.facedetect_examples() / "grace_hopper_512x512.jpg")}
    out = {}
    for name, img in photos.items():
        d = max(det.detect(img), key=lambda d: d.score)
        out[name] = Face(name, img, (d.x, d.y, d.w, d.h))
    for k, d in enumerate(sorted(det.detect(t1), key=lambda d: d.x)):  # t1's six people, left to right
        out[f"t1_{k}"] = Face(f"t1_{k}", t1, (d.x, d.y, d.w, d.h))
    return out


def _background() -> np.ndarray:
    img = realmedia.read_rgb(realmedia.opencv_doc_data() / "home.jpg")
    return cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)


def _shot_frame(face: Face, face_h: float, centre, zoom: float, shift) -> tuple[np.ndarray, tuple]:
    """The whole photo scaled so the face is `face_h * zoom` high and centred at `centre + shift`."""
    x, y, w, h = face.box
    s = face_h * zoom / h
    cx, cy = centre[0] + shift[0], centre[1] + shift[1]
    M = np.float32([[s, 0, cx - (x + w / 2) * s], [0, s, cy - (y + h / 2) * s]])
    img = cv2.warpAffine(face.image, M, (W, H), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    return img, (cx - w * s / 2, cy - h * s / 2, w * s, h * s)


def _head(face: Face, face_h: float) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A head cut from the photo, scaled to a `face_h` high face: (patch, elliptical mask, face box in patch)."""
    x, y, w, h = face.box
    s = face_h / h
    cx, cy = x + w / 2, y + h / 2 - 0.1 * h
    hw, hh = 0.85 * w, 0.95 * h  # half sizes of the cut: face plus hair and some neck
    x0, y0 = int(max(0, cx - hw)), int(max(0, cy - hh))
    x1, y1 = int(min(face.image.shape[1], cx + hw)), int(min(face.image.shape[0], cy + hh))
    patch = cv2.resize(face.image[y0:y1, x0:x1], (round((x1 - x0) * s), round((y1 - y0) * s)), interpolation=cv2.INTER_AREA)
    ph, pw = patch.shape[:2]
    mask = np.zeros((ph, pw), np.uint8)
    cv2.ellipse(mask, (pw // 2, ph // 2), (pw // 2 - 1, ph // 2 - 1), 0, 0, 360, 1, -1)
    return patch, mask.astype(bool), ((x - x0) * s, (y - y0) * s, w * s, h * s)


def _paste(img, lab, k, head, top_left) -> None:
    """Paste `head` with its top-left at `top_left`; mark its visible face pixels k in `lab`, hide what it covers."""
    patch, mask, fb = head
    px, py = int(round(top_left[0])), int(round(top_left[1]))
    ph, pw = mask.shape
    x0, y0, x1, y1 = max(0, px), max(0, py), min(img.shape[1], px + pw), min(img.shape[0], py + ph)
    if x1 <= x0 or y1 <= y0:
        return
    m = mask[y0 - py : y1 - py, x0 - px : x1 - px]
    img[y0:y1, x0:x1][m] = patch[y0 - py : y1 - py, x0 - px : x1 - px][m]
    face = np.zeros_like(m)
    fx0, fy0 = int(round(fb[0])) + px - x0, int(round(fb[1])) + py - y0
    face[max(0, fy0) : max(0, fy0 + int(round(fb[3]))), max(0, fx0) : max(0, fx0 + int(round(fb[2])))] = True
    region = lab[y0:y1, x0:x1]
    region[m] = 0  # whatever was behind is hidden
    region[m & face] = k


def cuts_same_place(shot_len: int = 8) -> Clip:
    """Hard cuts between different real people whose faces sit at the same place and size (a slow zoom and
    pan inside each shot), then, with no cut at all, one head swapped for another on the same background."""
    fs = faces()
    order = ["obama", "biden", "t1_1", "t1_2", "grace", "t1_4"]  # t1_1 -> t1_2: same photo, same light
    frames, maps, cuts = [], [], []
    neighbours = [f"t1_{k}" for k in range(6)]  # labels len(order) + 2 ..: t1's people beside the one in focus
    people = order + ["t1_3"] + neighbours
    for si, name in enumerate(order):
        if si:
            cuts.append(len(frames))
        # t1's shots show its other people too: each is labelled (a key on one of them is judged as well)
        others = [n for n in fs if n.startswith("t1_") and n != name] if name.startswith("t1_") else []
        for j in range(shot_len):
            a = j / (shot_len - 1)
            img, fb = _shot_frame(fs[name], 90, (W / 2, H / 2 - 10), 1.0 + 0.05 * a, (6 * a, 2 * a))
            lab = np.zeros((H, W), np.uint8)
            s, (x0, y0) = fb[3] / fs[name].box[3], fb[:2]  # photo -> frame: scale, and where the face box lands
            for other in others:
                ox, oy, ow, oh = fs[other].box
                x, y = x0 + (ox - fs[name].box[0]) * s, y0 + (oy - fs[name].box[1]) * s
                x, y, w, h = (int(round(v)) for v in (x, y, ow * s, oh * s))
                lab[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)] = len(order) + 2 + neighbours.index(other)
            x, y, w, h = (int(round(v)) for v in fb)
            lab[max(0, y) : y + h, max(0, x) : x + w] = si + 1
            frames.append(img), maps.append(lab)
    cuts.append(len(frames))  # the swap segment starts with a cut (other background)
    bg = _background()
    for name in ["biden", "t1_3"]:  # same background, same place: only the face changes
        head = _head(fs[name], 80)
        k = people.index(name) + 1
        for j in range(shot_len):
            img, lab = bg.copy(), np.zeros((H, W), np.uint8)
            ph, pw = head[1].shape
            _paste(img, lab, k, head, (W / 2 - pw / 2 + j, H / 2 - ph / 2))
            frames.append(img), maps.append(lab)
    return _label_clip("cuts_same_place", frames, people, maps, cuts, extras=range(len(order) + 2, len(people) + 1))


def dissolve(still: int = 8, fade: int = 12) -> Clip:
    """A gradual transition (no hard cut): one person's shot cross-fades into another's at the same place and
    size over `fade` frames. Frames more than 70% one person are labelled with that person, the blends in
    between with nobody (not judged by person); the new shot counts from the first blended frame."""
    fs = faces()
    a, fa = _shot_frame(fs["obama"], 90, (W / 2, H / 2 - 10), 1.0, (0, 0))
    b, fb = _shot_frame(fs["biden"], 90, (W / 2, H / 2 - 10), 1.0, (0, 0))
    frames, maps = [], []
    for i in range(2 * still + fade):
        w = min(1.0, max(0.0, (i - still + 1) / (fade + 1)))  # weight of the second shot
        frames.append(cv2.addWeighted(a, 1.0 - w, b, w, 0.0))
        lab = np.zeros((H, W), np.uint8)
        if w < 0.3 or w > 0.7:
            x, y, bw, bh = (int(round(v)) for v in (fa if w < 0.3 else fb))
            lab[max(0, y) : y + bh, max(0, x) : x + bw] = 1 if w < 0.3 else 2
        maps.append(lab)
    return _label_clip("dissolve", frames, ["obama", "biden"], maps, cuts=(still,))  # the blend's first frame


def crossing(n: int = 32, same_row: bool = False, turn: bool = False) -> Clip:
    """Two real heads crossing on a real background, the nearer (larger, pasted last) passing in front and
    hiding the other for a few frames. `same_row`: same height and size, only the z-order differs. `turn`:
    they meet in the middle and each walks back the way it came (constant-velocity prediction would swap)."""
    fs = faces()
    bg = _background()
    back = _head(fs["obama"], 56 if not same_row else 62)
    front = _head(fs["biden"], 70 if not same_row else 62)
    frames, maps = [], []
    for i in range(n):
        a = i / (n - 1)
        if turn:
            a = 0.5 - abs(a - 0.5)  # out to the middle and back
        img, lab = bg.copy(), np.zeros((H, W), np.uint8)
        for k, (head, x0, x1, yc) in enumerate(((back, 20, 300, 95), (front, 300, 20, 95 if same_row else 120)), 1):
            ph, pw = head[1].shape
            _paste(img, lab, k, head, (x0 + (x1 - x0) * a - pw / 2, yc - ph / 2))
        frames.append(img), maps.append(lab)
    name = "meet_and_turn" if turn else "crossing_same_row" if same_row else "crossing"
    return _label_clip(name, frames, ["obama", "biden"], maps)


def small_faces_vtest(n: int = 48) -> Clip:
    """Small faces in surveillance footage: opencv-doc's vtest.avi (its real pedestrians and camera noise, no
    cut), frames 0..n-1 at half size (384x288), with three real heads of 24-30 px faces walking through it:
    two cross on one row (the nearer, pasted last, passes in front and hides the other), a third walks down
    past them. vtest's own faces (about 10 px at this size) are below the detector's reach; a detection on
    one is not judged (None)."""
    from facekeys.indexer.video import VideoReader

    with VideoReader(realmedia.opencv_doc_data() / "vtest.avi") as r:
        frames = []
        for fr in r.frames():
            frames.append(cv2.resize(fr.image, (384, 288), interpolation=cv2.INTER_AREA))
            if len(frames) == n:
                break
    fs = faces()
    people = ["t1_0", "t1_5", "grace"]
    heads = [_head(fs[p], h) for p, h in zip(people, (24, 28, 30))]
    paths = [((40, 150), (330, 150)), ((340, 158), (50, 158)), ((200, 40), (160, 250))]  # centre from -> to
    out, maps = [], []
    for i, im in enumerate(frames):
        a = i / (n - 1)
        img, lab = im.copy(), np.zeros(im.shape[:2], np.uint8)
        for k, (head, ((x0, y0), (x1, y1))) in enumerate(zip(heads, paths), 1):
            ph, pw = head[1].shape
            _paste(img, lab, k, head, (x0 + (x1 - x0) * a - pw / 2, y0 + (y1 - y0) * a - ph / 2))
        out.append(img), maps.append(lab)
    return _label_clip("small_faces_vtest", out, people, maps)


MEGAMIND_CUTS = (1, 98, 154, 200)  # frame 0 is black; found by shots.py, equal to the file's key frames


def megamind() -> Clip:
    """opencv-doc's Megamind.avi (720x528, 270 frames, 4 shots). Ground truth by shot and side: shots 1 and 3
    show Roxanne (left of x=400 in shot 1) and, in shot 1, a man in the background (right); shots 2 and 4
    show Hal. The faces never share a side within a shot, so the box centre names the person; checked with
    dlib's 128-D descriptor in benchmarks/bench_tracking.py (nearest-person agreement on every detection but
    one false positive on Roxanne's hair). Only detector boxes are judged by person (a held box may sit on
    no face); every box is judged by shot."""
    from facekeys.indexer.video import VideoReader

    with VideoReader(realmedia.opencv_doc_data() / "Megamind.avi") as r:
        frames = [f.image for f in r.frames()]

    def shown(f: int, box) -> str | None:
        s = bisect.bisect_right(MEGAMIND_CUTS, f)
        if s == 0:
            return None
        if s == 1:
            return "roxanne" if box[0] + box[2] / 2 < 400 else "background man"
        return "hal" if s in (2, 4) else "roxanne"

    return Clip("megamind", frames, MEGAMIND_CUTS, shown, exact=False)


def purity(tracks, clip: Clip) -> tuple[int, list[str]]:
    """(pure tracks, problems): a track is pure when all its key boxes show one person and lie in one shot."""
    pure, problems = 0, []
    for t in tracks:
        who = {clip.shown(b[0], b[1:]) for b, d in zip(t.boxes, t.detected) if d or clip.exact} - {None}
        shots = {clip.shot(b[0]) for b in t.boxes}
        if len(who) <= 1 and len(shots) == 1:
            pure += 1
        else:
            problems.append(f"track {t.track_id} frames {t.first_frame}..{t.last_frame}: {sorted(who)}, shots {sorted(shots)}")
    return pure, problems


def _people_along(t, clip: Clip) -> list[str]:
    """The person each judged key box of a track shows, in frame order (boxes showing nobody left out)."""
    who = (clip.shown(b[0], b[1:]) for b, d in zip(t.boxes, t.detected) if d or clip.exact)
    return [w for w in who if w is not None]


def id_swaps(tracks, clip: Clip) -> int:
    """Times a key goes from showing one person to showing another (A -> B -> A counts 2): each one is a
    stretch of frames where a reveal of that key would paint the wrong face. 0 for pure keys."""
    return sum(sum(a != b for a, b in zip(w, w[1:])) for w in (_people_along(t, clip) for t in tracks))


def box_purity(tracks, clip: Clip) -> float:
    """Judged key boxes showing their key's majority person, over all judged key boxes (1.0: no key shows two
    people; 1.0 also when no box is judged)."""
    good = total = 0
    for t in tracks:
        w = _people_along(t, clip)
        if w:
            good += max(w.count(p) for p in set(w))
            total += len(w)
    return good / total if total else 1.0

"""Shot-cut detection on decoded frames, so that no face track (one key) spans two shots.

Signal: the mean absolute change of a 64x36 gray thumbnail between consecutive frames (0..1).

Hard cuts: a frame starts a new shot when its change is at least `threshold` AND at least `ratio` times the
median change of the `window` frames before it: the ratio test keeps camera pans and large objects moving close
to the camera (high change, but sustained) from reading as cuts; a whip pan out of a still shot does read as
one. Measured (benchmarks/bench_tracking.py): opencv-doc's Megamind.avi cuts 0.159..0.174 at 12.4x..24.1x the
median (0.134 out of its black first frame), its 265 other frames <= 0.016 at <= 2.0x; no cut found in all of
vtest.avi (795 frames) nor tree.avi (a hand sweeping past the lens).

Gradual transitions (dissolves, cross-fades): over the last L/4, L/2 or L frames (L = `gradual_window`) the
thumbnail changed by at least `threshold` (net, last frame against the window's first), the change was coherent
(net >= `gradual_coherence` x the sum of the per-frame changes: every pixel moving one way, as in a blend; a pan
or a passing object goes back and forth: measured max 0.36 for a pan, 0.18 for tree.avi, 1.00 for a dissolve,
12-frame windows) and spread over the frame (at least `gradual_spread` of its 4x4 blocks changed by >=
threshold / 2). The new shot is dated back to the first frame of the run of frames that carried the change
(`CutDetector.shot_start`), so the tracker can drop the keys' boxes from there on; found 4..23 frames after the
first blended frame of 0.4 to 2.4 s cross-fades of two photos (tests/indexer/test_indexer_track.py).

A false cut only splits tracks (more keys, never a merged one). A face morphing into another one on an unchanged
background is no shot change: that is for the appearance gate (tracker), and beyond a cheap descriptor, for an
identity descriptor.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from facekeys.errors import InvalidArgument

__all__ = ["ShotConfig", "CutDetector", "find_cuts", "thumbnail"]

THUMB = (64, 36)  # (w, h) of the gray thumbnail compared between frames


@dataclass(frozen=True)
class ShotConfig:
    threshold: float = 0.08  # min mean |gray change| (0..1) of the thumbnail for a cut
    ratio: float = 4.0  # ... and min multiple of the median change over the previous `window` frames
    window: int = 8  # frames of recent change the ratio is taken against
    gradual_window: int = 48  # longest span (frames) a gradual transition is looked for over (also over 1/4 and
    # 1/2 of it); 0 = hard cuts only
    gradual_coherence: float = 0.7  # min net change / summed per-frame change for a gradual transition
    gradual_spread: float = 0.5  # min fraction of the thumbnail's 4x4 blocks that changed

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise InvalidArgument(f"ShotConfig.threshold must be in (0, 1), got {self.threshold}")
        if not 1.0 <= self.ratio <= 100.0:
            raise InvalidArgument(f"ShotConfig.ratio must be in [1, 100], got {self.ratio}")
        if not 1 <= self.window <= 120:
            raise InvalidArgument(f"ShotConfig.window must be in 1..120 frames, got {self.window}")
        if self.gradual_window != 0 and not 4 <= self.gradual_window <= 240:
            raise InvalidArgument(f"ShotConfig.gradual_window must be 0 or in 4..240 frames, got {self.gradual_window}")
        if not 0.0 < self.gradual_coherence <= 1.0:
            raise InvalidArgument(f"ShotConfig.gradual_coherence must be in (0, 1], got {self.gradual_coherence}")
        if not 0.0 < self.gradual_spread <= 1.0:
            raise InvalidArgument(f"ShotConfig.gradual_spread must be in (0, 1], got {self.gradual_spread}")


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (36, 64) float32 gray in 0..1."""
    h, w = image.shape[:2]
    step = max(1, min(h // (2 * THUMB[1]), w // (2 * THUMB[0])))  # subsample to ~2x first: 4x cheaper, same scores
    small = cv2.resize(np.ascontiguousarray(image[::step, ::step]), THUMB, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32) * (1.0 / 255.0)


class CutDetector:
    """Streaming: `update(frame)` for every frame in order; True when a new shot starts at this frame (a hard
    cut) or, for a gradual transition found at this frame, a few frames back: `shot_start` is then the index
    (0-based count of frames given to `update`) of the new shot's first frame. `in_transition` stays True
    for the frames after that while the transition goes on (blends of two shots: in no key)."""

    _FLOOR = 0.005  # added to the median so a perfectly still shot does not make noise look like a cut
    _RUN = 0.3  # a gradual transition starts where the per-frame change last fell below this x its mean

    def __init__(self, cfg: ShotConfig = ShotConfig()):
        if not isinstance(cfg, ShotConfig):
            raise InvalidArgument(f"cfg must be a ShotConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self._prev: np.ndarray | None = None  # (36, 64) thumbnail of the previous frame
        self._recent: deque[float] = deque(maxlen=cfg.window)  # changes of the last `window` frames
        self._thumbs: deque[np.ndarray] = deque(maxlen=cfg.gradual_window + 1)  # [(36, 64)] since the shot began
        self._steps: deque[float] = deque(maxlen=cfg.gradual_window)  # per-frame changes between those
        self._n = -1  # index of the last frame given to update()
        self.shot_start = 0  # first frame of the current shot
        self.in_transition = False  # the last frame is inside a gradual transition found earlier (still fading)
        self._fade: float | None = None  # per-frame change that keeps a found gradual transition going ...
        self._fade_until = 0  # ... up to this frame
        self.score: tuple[float, float] = (0.0, 0.0)  # last frame's (change, change / (median + floor)), for measuring

    def update(self, image: np.ndarray) -> bool:
        """`image` (H, W, 3) uint8 RGB. Returns whether a new shot starts (never at frame 0); see `shot_start`."""
        cur = thumbnail(image)
        self._n += 1
        prev, self._prev = self._prev, cur
        if prev is None or prev.shape != cur.shape:
            self._thumbs.clear(), self._steps.clear()
            self._thumbs.append(cur)
            return False
        change = float(np.abs(cur - prev).mean())
        base = float(np.median(self._recent)) if self._recent else 0.0
        self.score = (change, change / (base + self._FLOOR))
        cut = change >= self.cfg.threshold and change >= self.cfg.ratio * (base + self._FLOOR)
        self._recent.append(change)  # the median shrugs off the one cut among them
        # A found transition goes on while the frames keep changing as much, for as long again as it had run
        # when found (a bound: a slow fade's per-frame change is no larger than a live shot's noise).
        self.in_transition = self._fade is not None and not cut and change >= self._fade and self._n <= self._fade_until
        if cut or self.in_transition:  # a gradual transition goes on: no new one is looked for inside it
            self.shot_start = self._n if cut else self.shot_start
            self._fade = self._fade if self.in_transition else None
            self._thumbs.clear(), self._steps.clear()
            self._thumbs.append(cur)
            return cut
        self._fade = None
        self._thumbs.append(cur), self._steps.append(change)
        start = self._gradual()
        if start is None:
            return False
        self.shot_start = start
        self.in_transition = True
        self._fade_until = 2 * self._n - start
        self._thumbs.clear(), self._steps.clear()
        self._thumbs.append(cur)
        return True

    def _gradual(self) -> int | None:
        """First frame of a gradual transition ending at the last frame, or None. Looked for over the last
        L/4, L/2 and L frames (L = gradual_window): a short window finds a quick dissolve early, a long one a
        slow dissolve whose per-window change is small."""
        L = self.cfg.gradual_window
        for w in (L // 4, L // 2, L):
            if len(self._thumbs) < w + 1:
                return None
            d = np.abs(self._thumbs[-1] - self._thumbs[-1 - w])  # (36, 64)
            net, path = float(d.mean()), float(sum(itertools.islice(self._steps, len(self._steps) - w, None)))
            if net < self.cfg.threshold or net < self.cfg.gradual_coherence * path:
                continue
            blocks = d.reshape(4, THUMB[1] // 4, 4, THUMB[0] // 4).mean(axis=(1, 3))  # (4, 4)
            if float((blocks >= self.cfg.threshold / 2).mean()) < self.cfg.gradual_spread:
                continue
            k = len(self._steps)  # steps[k - 1] is the change into frame n - len(steps) + k
            while k > 0 and self._steps[k - 1] >= self._RUN * path / w:
                k -= 1
            self._fade = self._RUN * path / w
            return self._n - len(self._steps) + k + 1  # the first frame that carried the change
        return None


def find_cuts(frames: Iterable[np.ndarray], cfg: ShotConfig = ShotConfig()) -> list[int]:
    """Indices of the frames that start a new shot (what the tracker ends its tracks at)."""
    det = CutDetector(cfg)
    return [det.shot_start for im in frames if det.update(im)]

"""read -> detect -> track -> look-ahead buffer -> obfuscate -> write, for one video file.

The look-ahead buffer holds `TrackerConfig.max_gap` frames: a box interpolated (or held) for frame f only
becomes known once frame f + max_gap has been tracked, and it must be drawn before f is encoded. Decoding
and encoding run in their own threads (PyAV and libx264 release the GIL) so they overlap with inference.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable

import numpy as np

from facekeys.errors import InvalidArgument

from .detect import Detector, DetectorConfig, make_detector
from .obfuscate import ObfuscationConfig, obfuscate
from .track import Track, Tracker, TrackerConfig
from .video import EncoderConfig, VideoReader, VideoWriter

__all__ = [
    "DetectorConfig",
    "TrackerConfig",
    "ObfuscationConfig",
    "EncoderConfig",
    "obfuscate_video",
    "keys_for_tracks",
]

_END = object()


class _Thread(threading.Thread):
    """Runs `fn`, keeping its exception for the main thread."""

    def __init__(self, fn, name):
        super().__init__(name=name, daemon=True)
        self._fn, self.error = fn, None

    def run(self):
        try:
            self._fn()
        except BaseException as e:  # handed to the main thread, re-raised there
            self.error = e


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def obfuscate_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    detector: Detector | DetectorConfig = DetectorConfig(),
    tracker_cfg: TrackerConfig = TrackerConfig(),
    obfuscation_cfg: ObfuscationConfig = ObfuscationConfig(),
    encoder_cfg: EncoderConfig = EncoderConfig(),
    *,
    on_track: Callable[[Track], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> list[Track]:
    """Write `dst` (H.264 MP4, same timestamps, audio kept) with every tracked face obfuscated.

    `detector` is a built detector or a `DetectorConfig` to build one from. Returns the finished tracks
    (>= `tracker_cfg.min_hits` detections) in the order they ended; with `on_track` set, each track is handed
    to it as soon as it ends instead and the returned list is empty (bounded memory on long videos).
    `on_frame(index)` is called as each (obfuscated) frame is handed to the encoder (progress bars).
    Raises `VideoError` (an `InvalidArgument`) for unreadable input; `dst` only appears on success.
    """
    for name, val, typ in (
        ("tracker_cfg", tracker_cfg, TrackerConfig),
        ("obfuscation_cfg", obfuscation_cfg, ObfuscationConfig),
        ("encoder_cfg", encoder_cfg, EncoderConfig),
    ):
        if not isinstance(val, typ):
            raise InvalidArgument(f"{name} must be a {typ.__name__}, got {type(val).__name__}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise InvalidArgument("dst must differ from src")
    if isinstance(detector, DetectorConfig):
        detector = make_detector(detector)
    elif not callable(getattr(detector, "detect", None)):
        raise InvalidArgument(f"detector must be a DetectorConfig or have .detect(image), got {type(detector).__name__}")

    tracks: list[Track] = []
    emit = on_track if on_track is not None else tracks.append
    tracker = Tracker(tracker_cfg)
    lookahead = tracker.lookahead

    with VideoReader(src) as reader:
        info = reader.info
        writer = VideoWriter(dst, info.width, info.height, info.time_base, info.rate, reader.audio_stream, encoder_cfg)
        stop = threading.Event()
        frames_q: queue.Queue = queue.Queue(maxsize=4)  # decoded frames waiting for detection
        out_q: queue.Queue = queue.Queue(maxsize=8)  # ("v", image, pts) / ("a", packet) for the writer

        def decode():
            try:
                for fr in reader.frames(audio_sink=lambda p: _put(out_q, ("a", p), stop)):
                    _put(frames_q, fr, stop)
                    if stop.is_set():
                        return
            finally:
                _put(frames_q, _END, stop)

        def encode():
            while not stop.is_set():
                try:
                    item = out_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if item[0] == "v":
                    writer.write(item[1], item[2])
                else:
                    writer.mux_audio(item[1])

        dec, enc = _Thread(decode, "facekeys-decode"), _Thread(encode, "facekeys-encode")
        dec.start(), enc.start()
        buffer: deque = deque()  # frames whose boxes are not final yet, at most lookahead + 1
        ok = False
        try:

            def release(upto: int) -> None:
                while buffer and buffer[0].index <= upto:
                    fr = buffer.popleft()
                    obfuscate(fr.image, tracker.pop_boxes(fr.index), obfuscation_cfg)
                    _put(out_q, ("v", fr.image, fr.pts), stop)
                    if on_frame is not None:
                        on_frame(fr.index)
                    if enc.error is not None:
                        raise enc.error

            while True:
                fr = frames_q.get()
                if fr is _END:
                    break
                dets = detector.detect(fr.image)
                for t in tracker.update(fr.index, fr.time, fr.image, dets):
                    emit(t)
                buffer.append(fr)
                release(fr.index - lookahead)
            if dec.error is not None:
                raise dec.error
            for t in tracker.finish():
                emit(t)
            release(float("inf"))
            _put(out_q, _END, stop)
            enc.join()
            if enc.error is not None:
                raise enc.error
            writer.close()
            ok = True
        finally:
            if not ok:
                stop.set()
                enc.join(timeout=5)
                dec.join(timeout=5)
                writer.abort()
        if dec.error is not None:
            raise dec.error
    return tracks


def keys_for_tracks(tracks: list[Track], encoder) -> np.ndarray:
    """Feature keys for tracks: align each best crop on its landmarks and encode it.

    `encoder` has `encode(images (B, 256, 256, 3) uint8 RGB) -> (B, 18, 512)` (`facekeys.models.FaceEncoder`).
    Returns (len(tracks), 18, 512) float32, row i for tracks[i].
    """
    from facekeys.models.align import align_face  # imported late: facekeys.models pulls in torch

    if not tracks:
        return np.zeros((0, 18, 512), dtype=np.float32)
    aligned = np.stack([align_face(t.best_crop, t.best_landmarks) for t in tracks])  # (B, 256, 256, 3) uint8
    latents = np.asarray(encoder.encode(aligned), dtype=np.float32)  # (B, 18, 512)
    if latents.shape != (len(tracks), 18, 512):
        raise InvalidArgument(f"encoder returned {latents.shape}, want ({len(tracks)}, 18, 512)")
    return latents

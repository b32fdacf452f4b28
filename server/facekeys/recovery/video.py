"""Output video for reveals: the source frames (decoded by `facekeys.indexer.video.VideoReader`), re-encoded
with one of three codecs, each frame at its source pts, audio carried over.

The indexer's `VideoWriter` is H.264 yuv420p only; a reveal also needs lossless output, where every pixel
outside the revealed regions decodes exactly as the input decoded:

  "h264-lossless"  libx264rgb, crf 0, RGB 4:4:4, MP4 (default). Exact; plays in ffmpeg/VLC, not in most browsers.
  "ffv1"           FFV1 (bgr0), Matroska. Exact; archival.
  "h264"           libx264, yuv420p, crf `crf`, MP4. Small and playable everywhere, but lossy: pixels outside
                   the revealed regions change by the re-encode (chroma subsampling + quantisation).

PyAV is imported here, not at package import: Recover works without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from facekeys.errors import InvalidArgument

__all__ = ["CODECS", "OutputVideoConfig", "RevealWriter"]

# name -> (container format, file suffix, encoder, pix_fmt, options(crf))
CODECS = {
    "h264-lossless": ("mp4", ".mp4", "libx264rgb", "rgb24", lambda crf: {"crf": "0", "preset": "veryfast"}),
    "ffv1": ("matroska", ".mkv", "ffv1", "bgr0", lambda crf: {}),
    "h264": ("mp4", ".mp4", "libx264", "yuv420p", lambda crf: {"crf": str(crf), "preset": "veryfast"}),
}
MP4_AUDIO_COPY = frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"})  # as the indexer's writer


@dataclass(frozen=True)
class OutputVideoConfig:
    codec: str = "h264-lossless"  # "h264-lossless" | "ffv1" (exact outside the revealed regions) | "h264" (lossy)
    crf: int = 18  # libx264 quality for "h264" only (lower = better); the lossless codecs ignore it

    def __post_init__(self):
        if self.codec not in CODECS:
            raise InvalidArgument(f"output codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if not 0 <= self.crf <= 51:
            raise InvalidArgument(f"crf must be in 0..51, got {self.crf}")

    @property
    def suffix(self) -> str:
        return CODECS[self.codec][1]


class RevealWriter:
    """Write (H, W, 3) uint8 RGB frames at given pts; `close()` moves `<path>.partial` to `path`."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, time_base: Fraction,
                 rate: Fraction | None, audio_template, cfg: OutputVideoConfig = OutputVideoConfig()):
        import av

        fmt, _, encoder, pix_fmt, options = CODECS[cfg.codec]
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self.width, self.height = width, height
        sub = pix_fmt == "yuv420p"  # 4:2:0 needs even sizes: pad one replicated pixel, like the indexer
        self._ew, self._eh = (width + (width & 1), height + (height & 1)) if sub else (width, height)
        self._av = av
        # Matroska would shift every stream so that none starts below 0 (AAC priming starts audio at about
        # -21 ms), moving the video's stamps; keep them as they are (MP4 uses an edit list instead).
        opts = {"avoid_negative_ts": "disabled"} if fmt == "matroska" else {}
        self._c = av.open(str(self._tmp), mode="w", format=fmt, container_options=opts)
        try:
            vs = self._c.add_stream(encoder, rate=rate or Fraction(25))
            vs.width, vs.height, vs.pix_fmt = self._ew, self._eh, pix_fmt
            vs.time_base = time_base
            vs.codec_context.time_base = time_base
            vs.thread_type = "AUTO"
            vs.options = options(cfg.crf)
            self._vs, self._tb = vs, time_base
            self._as, self._reencode = None, False
            if audio_template is not None:
                name = audio_template.codec_context.name
                if fmt == "matroska" or name in MP4_AUDIO_COPY:
                    self._as = self._c.add_stream_from_template(audio_template)
                else:  # e.g. PCM in MP4: re-encode to AAC
                    cc = audio_template.codec_context
                    arate = cc.sample_rate or 48000
                    self._as = self._c.add_stream("aac", rate=arate)
                    n = cc.layout.nb_channels if cc.layout else 2
                    self._as.codec_context.layout = {1: "mono", 2: "stereo", 6: "5.1"}.get(n, "stereo")
                    self._as.codec_context.format = "fltp"
                    self._as.codec_context.time_base = Fraction(1, arate)
                    self._reencode = True
        except BaseException:
            self._c.close()
            self._tmp.unlink(missing_ok=True)
            raise
        self._closed = False
        self.frames_written = 0

    def write(self, image: np.ndarray, pts: int) -> None:
        """image (H, W, 3) uint8 RGB at `pts` (source time-base units)."""
        if (self._ew, self._eh) != (self.width, self.height):
            image = np.pad(image, ((0, self._eh - self.height), (0, self._ew - self.width), (0, 0)), mode="edge")
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        vf.pts, vf.time_base = int(pts), self._tb
        for p in self._vs.encode(vf):
            self._c.mux(p)
        self.frames_written += 1

    def mux_audio(self, packet) -> None:
        if self._as is None:
            return
        if self._reencode:
            for af in packet.decode():
                af.pts = None
                for p in self._as.encode(af):
                    self._c.mux(p)
            return
        packet.stream = self._as
        self._c.mux(packet)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for p in self._vs.encode(None):
                self._c.mux(p)
            if self._reencode:
                for p in self._as.encode(None):
                    self._c.mux(p)
        except BaseException:
            self._c.close()
            self._tmp.unlink(missing_ok=True)
            raise
        self._c.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._c.close()
            self._tmp.unlink(missing_ok=True)

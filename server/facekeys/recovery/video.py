"""Output video for reveals: which codec a reveal writes, and under which file suffix.

The frames are decoded by `facekeys.indexer.video.VideoReader` and re-encoded by the same module's
`VideoWriter` (each frame at its source pts, audio carried over, `<dst>.partial` renamed when complete), with
one of its codecs; a reveal defaults to a lossless one, where every pixel outside the revealed regions
decodes exactly as the input decoded:

  "h264-lossless"  libx264rgb, crf 0, RGB 4:4:4, MP4 (default). Exact; plays in ffmpeg/VLC, not in most browsers.
  "ffv1"           FFV1 (bgr0), Matroska. Exact; archival.
  "h264"           libx264, yuv420p, crf `crf`, MP4. Small and playable everywhere, but lossy: pixels outside
                   the revealed regions change by the re-encode (chroma subsampling + quantisation).

PyAV is not imported here (nor at package import): Recover works without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from facekeys.errors import InvalidArgument

__all__ = ["CODECS", "OutputVideoConfig"]

# codec name (facekeys.indexer.video.CODECS) -> file suffix of its container
CODECS = {"h264-lossless": ".mp4", "ffv1": ".mkv", "h264": ".mp4"}


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
        return CODECS[self.codec]

    def encoder(self):
        """-> the `facekeys.indexer.video.EncoderConfig` writing this output (imports PyAV)."""
        from facekeys.indexer.video import EncoderConfig

        return EncoderConfig(crf=self.crf, preset="veryfast", codec=self.codec)

"""PyAV video I/O: RGB frames with their original timestamps in, H.264 (or lossless) out with the audio kept.

The reader stamps each frame with its presentation pts (B-frames, open GOPs, variable frame rate, a first
pts > 0 and MP4 edit lists come out as the source has them). The writer keeps every frame's pts in the
source stream's time base, pads odd widths/heights by one replicated pixel (yuv420p needs even sizes),
copies the audio packets when the container can hold the codec and re-encodes them to AAC otherwise, and
writes to `<dst>.partial` first so a failed run never leaves a half file under the final name.

`EncoderConfig.codec` picks the output (the indexer uses "h264"; recovery's reveals default to a lossless one,
where every pixel decodes exactly as it was written):

  "h264"           libx264, yuv420p, crf `crf`, MP4. Small and playable everywhere; lossy.
  "h264-lossless"  libx264rgb, crf 0, RGB 4:4:4, MP4. Exact; plays in ffmpeg/VLC, not in most browsers.
  "ffv1"           FFV1 (bgr0), Matroska. Exact; archival.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from facekeys.errors import InvalidArgument

__all__ = ["VideoError", "VideoInfo", "Frame", "VideoReader", "CODECS", "EncoderConfig", "VideoWriter"]

# Audio codecs the MP4 muxer takes as-is; anything else is re-encoded to AAC (Matroska takes any codec).
MP4_AUDIO_COPY = frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"})

# Demuxers that store no presentation timestamps, only a decode-order slot per packet: libavformat makes
# packet pts up, wrongly once frames are reordered (XviD's packed B-frames in Megamind.avi decode as pts
# 1, 2, 3, 5, 4, ...). There a frame's presentation slot is the dts of the packet that released it from the
# decoder (AVFrame.pkt_dts), which is the stamp ffmpeg shows for such files. Raw elementary streams
# (the no_timestamps flag) are in the same case.
NO_PTS_FORMATS = frozenset({"avi"})

# AC-3 / E-AC-3 syncword: ISO BMFF stores whole syncframes only, and the MP4 muxer drops leading packets
# that are not one (a fragment cut off by an edit, as in Megamind.avi), so the writer counts them instead.
AC3_SYNC = b"\x0b\x77"

# EncoderConfig.codec -> (container format, encoder, pix_fmt, encoder options from the config)
CODECS = {
    "h264": ("mp4", "libx264", "yuv420p", lambda cfg: {"crf": str(cfg.crf), "preset": cfg.preset}),
    "h264-lossless": ("mp4", "libx264rgb", "rgb24", lambda cfg: {"crf": "0", "preset": cfg.preset}),
    "ffv1": ("matroska", "ffv1", "bgr0", lambda cfg: {}),
}


class VideoError(InvalidArgument):
    """The input is not a readable video (missing, empty, truncated, no video stream, undecodable)."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    time_base: Fraction  # of the video stream; Frame.pts counts in it
    rate: Fraction | None  # average frame rate when the container knows it
    frames: int  # container's frame count, 0 when unknown
    codec: str
    audio_codec: str | None  # None = no audio stream


@dataclass(eq=False)
class Frame:
    index: int  # 0, 1, 2, ... in decode (presentation) order
    image: np.ndarray  # (H, W, 3) uint8 RGB
    pts: int  # in VideoInfo.time_base units
    time: float  # seconds = pts * time_base


class VideoReader:
    """Open `path` and yield its frames: `with VideoReader(p) as r: for f in r.frames(): ...`."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise VideoError(f"video {str(path)!r} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise VideoError(f"video {str(path)!r} is empty (0 bytes)")
        try:
            self._c = av.open(str(path), mode="r")
        except (av.error.FFmpegError, UnicodeDecodeError) as e:
            raise VideoError(f"cannot open {str(path)!r} as a video (not a video, or truncated/corrupt): {e}") from e
        self.path = path
        try:
            if not self._c.streams.video:
                raise VideoError(f"{str(path)!r} has no video stream")
            self._vs = self._c.streams.video[0]
            self._vs.thread_type = "AUTO"
            cc = self._vs.codec_context
            if not cc.width or not cc.height:
                raise VideoError(f"{str(path)!r}: video stream has no frame size (truncated or corrupt)")
            self.audio_stream = self._c.streams.audio[0] if self._c.streams.audio else None
            fmt = self._c.format
            self._pts_from_dts = fmt.name in NO_PTS_FORMATS or bool(fmt.flags & av.format.Flags.no_timestamps.value)
            self.pts_repairs = 0  # frames whose pts did not increase and were moved one tick on (broken input)
            self.info = VideoInfo(
                width=cc.width,
                height=cc.height,
                time_base=self._vs.time_base or Fraction(1, 90000),
                rate=self._vs.average_rate or self._vs.guessed_rate,
                frames=int(self._vs.frames or 0),
                codec=cc.name,
                audio_codec=self.audio_stream.codec_context.name if self.audio_stream else None,
            )
        except BaseException:
            self._c.close()
            raise

    def frames(self, audio_sink: Callable[[av.Packet], None] | None = None) -> Iterator[Frame]:
        """Decode video frames in presentation order, each with its presentation pts.

        Every demuxed audio packet with data (if any) goes to `audio_sink` as it comes, the first one included.
        """
        streams = [self._vs] + ([self.audio_stream] if audio_sink and self.audio_stream else [])
        tb = self.info.time_base
        step = _pts_step(self.info)
        index, last_pts = 0, None
        try:
            for packet in self._c.demux(*streams):
                if packet.stream.type == "audio":
                    if packet.size:  # size 0: the demuxer's end-of-stream packet
                        if packet.dts is None:  # audio is never reordered: decode time = presentation time
                            packet.dts = packet.pts
                        try:
                            audio_sink(packet)
                        except av.error.FFmpegError as e:
                            raise VideoError(f"{str(self.path)!r}: carrying the audio over failed: {e}") from e
                    continue
                for vf in packet.decode():
                    # A decoded frame carries its own packet's pts (libavcodec reorders them with the frames);
                    # containers without pts get the decode-order slot instead (see NO_PTS_FORMATS).
                    pts = vf.dts if self._pts_from_dts else vf.pts
                    if pts is None:  # frames flushed at the end of a no-pts stream, or left unstamped
                        pts = 0 if last_pts is None else last_pts + (vf.duration or step)
                    elif last_pts is not None and pts <= last_pts:  # broken/duplicate stamps: keep them increasing
                        pts = last_pts + 1
                        self.pts_repairs += 1
                    last_pts = pts
                    img = vf.to_ndarray(format="rgb24")  # (H, W, 3) uint8
                    yield Frame(index, img, int(pts), float(pts * tb))
                    index += 1
        except av.error.FFmpegError as e:
            raise VideoError(f"{str(self.path)!r}: decoding failed after {index} frames: {e}") from e
        if index == 0:
            raise VideoError(f"{str(self.path)!r}: no decodable video frames (truncated or corrupt)")

    def close(self) -> None:
        self._c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _pts_step(info: VideoInfo) -> int:
    if info.rate:
        return max(1, round(1 / (info.rate * info.time_base)))
    return 1


def _movie_timescale(time_base: Fraction, audio_template: av.audio.stream.AudioStream | None) -> int:
    """The MP4 movie time scale that holds both tracks' start offsets exactly.

    The muxer writes each track's start (its first pts: a B-frame delay, an MPEG-TS 1.4 s, an edit list's
    offset) as an edit in the movie time scale, rounded down; at its default of 1/1000 s every frame and audio
    packet of such a source moved by up to 1 ms (41.708 ms became 41 ms). A multiple of the video time base's
    denominator and of the audio sample rate (the audio track's time scale) makes both exact.
    """
    rate = audio_template.codec_context.sample_rate if audio_template is not None else 0
    scale = math.lcm(time_base.denominator, rate) if rate else time_base.denominator
    return scale if scale <= 2**31 - 1 else time_base.denominator  # the option is a 32-bit int: video exact first


@dataclass(frozen=True)
class EncoderConfig:
    crf: int = 23  # libx264 constant rate factor (lower = better quality, bigger files); "h264" only
    preset: str = "veryfast"  # libx264 speed/size trade-off: ultrafast ... veryslow; not used by "ffv1"
    threads: int = 0  # encoder threads; 0 = auto
    codec: str = "h264"  # "h264" (lossy, yuv420p MP4) | "h264-lossless" (MP4) | "ffv1" (MKV): see CODECS

    def __post_init__(self):
        if self.codec not in CODECS:
            raise InvalidArgument(f"EncoderConfig.codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        presets = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
        if self.preset not in presets:
            raise InvalidArgument(f"EncoderConfig.preset must be one of {presets}, got {self.preset!r}")
        if not 0 <= self.crf <= 51:
            raise InvalidArgument(f"EncoderConfig.crf must be in 0..51, got {self.crf}")
        if self.threads < 0:
            raise InvalidArgument(f"EncoderConfig.threads must be >= 0, got {self.threads}")


class VideoWriter:
    """Video writer (`cfg.codec`, H.264/MP4 by default) keeping the given pts; `close()` publishes the file."""

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        time_base: Fraction,
        rate: Fraction | None = None,
        audio_template: av.audio.stream.AudioStream | None = None,
        cfg: EncoderConfig = EncoderConfig(),
    ):
        if width < 1 or height < 1:
            raise InvalidArgument(f"VideoWriter size must be positive, got {width}x{height}")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise InvalidArgument(f"output folder {str(self.path.parent)!r} does not exist")
        self._tmp = self.path.with_name(self.path.name + ".partial")
        fmt, encoder, pix_fmt, options = CODECS[cfg.codec]
        self.width, self.height = width, height
        if pix_fmt == "yuv420p":  # 4:2:0 needs even sizes: pad by one replicated pixel
            self._ew, self._eh = width + (width & 1), height + (height & 1)
        else:
            self._ew, self._eh = width, height
        # Matroska would shift every stream so that none starts below 0 (AAC priming starts audio at about
        # -21 ms), moving the video's stamps; keep them as they are (MP4 uses an edit list instead).
        opts = {"avoid_negative_ts": "disabled"} if fmt == "matroska" else {}
        if fmt == "mp4":
            opts["movie_timescale"] = str(_movie_timescale(time_base, audio_template))
        self._c = av.open(str(self._tmp), mode="w", format=fmt, container_options=opts)
        try:
            vs = self._c.add_stream(encoder, rate=rate or Fraction(25))
            vs.width, vs.height, vs.pix_fmt = self._ew, self._eh, pix_fmt
            vs.time_base = time_base
            vs.codec_context.time_base = time_base
            vs.thread_type = "AUTO"
            vs.options = options(cfg)
            if cfg.threads:
                vs.codec_context.thread_count = cfg.threads
            self._vs, self._tb = vs, time_base
            self._as = self._dec = None
            self._ac3_sync = False  # still before the first AC-3 syncframe of an MP4's copied AC-3/E-AC-3
            if audio_template is not None:
                name = audio_template.codec_context.name
                if fmt == "matroska" or name in MP4_AUDIO_COPY:
                    self._as = self._c.add_stream_from_template(audio_template)
                    self._ac3_sync = fmt == "mp4" and name in ("ac3", "eac3")
                else:  # e.g. PCM in MP4: decode and re-encode to AAC
                    cc = audio_template.codec_context
                    rate = cc.sample_rate or 48000
                    self._as = self._c.add_stream("aac", rate=rate)
                    n = cc.layout.nb_channels if cc.layout else 2
                    self._as.codec_context.layout = {1: "mono", 2: "stereo", 6: "5.1"}.get(n, "stereo")
                    self._as.codec_context.format = "fltp"
                    self._as.codec_context.time_base = Fraction(1, rate)
                    self._dec = True
        except BaseException:
            self._c.close()
            self._tmp.unlink(missing_ok=True)
            raise
        self._last_pts = None
        self._closed = False
        self.frames_written = 0
        self.audio_dropped = 0  # leading AC-3 fragments MP4 cannot store (see AC3_SYNC); every other packet is kept

    def write(self, image: np.ndarray, pts: int) -> None:
        """Encode one (H, W, 3) uint8 RGB frame at `pts` (time-base units, strictly increasing)."""
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise InvalidArgument(f"frame must be ({self.height}, {self.width}, 3) uint8, got {image.shape} {image.dtype}")
        if self._last_pts is not None and pts <= self._last_pts:
            raise InvalidArgument(f"pts must increase: {pts} after {self._last_pts}")
        if (self._ew, self._eh) != (self.width, self.height):
            image = np.pad(image, ((0, self._eh - self.height), (0, self._ew - self.width), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        vf.pts, vf.time_base = int(pts), self._tb
        for p in self._vs.encode(vf):
            self._c.mux(p)
        self._last_pts = pts
        self.frames_written += 1

    def mux_audio(self, packet: av.Packet) -> None:
        """Carry one demuxed source audio packet into the output (copy with its own pts, or AAC re-encode)."""
        if self._as is None:
            return
        if self._ac3_sync:
            if bytes(memoryview(packet)[:2]) != AC3_SYNC:
                self.audio_dropped += 1
                return
            self._ac3_sync = False
        if self._dec:
            for af in packet.decode():
                af.pts = None
                for p in self._as.encode(af):
                    self._c.mux(p)
            return
        packet.stream = self._as
        self._c.mux(packet)

    def close(self) -> None:
        """Flush the encoders and move the finished file to its final name."""
        if self._closed:
            return
        self._closed = True
        try:
            for p in self._vs.encode(None):
                self._c.mux(p)
            if self._dec:
                for p in self._as.encode(None):
                    self._c.mux(p)
        except BaseException:
            self._c.close()
            self._tmp.unlink(missing_ok=True)
            raise
        self._c.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial output."""
        if not self._closed:
            self._closed = True
            self._c.close()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()

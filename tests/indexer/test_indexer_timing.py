"""Timestamps and audio through the indexer's video path, checked frame for frame and packet for packet.

Clips of the kinds an archive holds, built with PyAV from real footage (the first frames of Debian
opencv-doc's Megamind.avi): H.264 with B-frames (libx264 bframes=3, b-pyramid) and with open GOPs, variable
frame rate, a first pts of 10 s, MPEG-TS (starts at 1.4 s, AC-3), an MP4 edit list that cuts (ffmpeg -ss with
-c copy), H.264 B-frames in AVI, and Megamind.avi itself (XviD packed B-frames in AVI, whose first AC-3
packet is a truncated fragment). Each goes through VideoReader -> VideoWriter (and Megamind through
obfuscate_video), and the output must have the source's presentation pts frame for frame, as many frames,
and the source's audio packets: same bytes, pts and duration, converted between time bases only where that
is exact (MPEG-TS's 90 kHz audio stamps land on the nearest 1/48000 s tick, the only place MP4 can put them).

The reference pts are PyAV's decode of the source in presentation order (frame.pts) or, for AVI, which
stores no pts, ffmpeg's own (`ffmpeg -copyts -vf showinfo`, from imageio-ffmpeg's binary).
`benchmarks/bench_timing.py` imports CLIPS, copy_through and timing_report from here.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import realmedia
from facekeys.indexer import video

SIZE = (160, 120)  # w, h of the clips built from Megamind's frames
N = 48  # frames per built clip: 1.6 s at 29.97 fps
NTSC = Fraction(30000, 1001)
X264 = "bframes=3:b-pyramid=normal:keyint=12:min-keyint=12:scenecut=0"


def ffmpeg_exe() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str) -> str:
    """Run imageio-ffmpeg's ffmpeg; returns its log (stderr)."""
    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)}: exit {r.returncode}: {r.stderr[-800:]}")
    return r.stderr


def megamind() -> Path:
    return realmedia.opencv_doc_data() / "Megamind.avi"


@functools.lru_cache(maxsize=None)
def footage(n: int = N) -> tuple[np.ndarray, ...]:
    """The first n frames of Megamind.avi scaled to SIZE, each (h, w, 3) uint8 RGB."""
    out = []
    with av.open(str(megamind())) as c:
        for f in c.decode(video=0):
            out.append(cv2.resize(f.to_ndarray(format="rgb24"), SIZE, interpolation=cv2.INTER_AREA))
            if len(out) == n:
                break
    return tuple(out)


def build(
    path: Path,
    pts: list[int],
    time_base: Fraction,
    *,
    fmt: str | None = None,
    x264: str = X264,
    audio: str | None = "aac",
    audio_start: Fraction = Fraction(0),
) -> Path:
    """Encode footage at `pts` (time_base units) with libx264; a 440 Hz stereo tone from `audio_start` s.

    An MP4 gets a movie time scale that holds its first pts exactly (as cameras and ffmpeg 9 write them):
    at libavformat 62's default of 1/1000 s the file itself would start on a whole millisecond."""
    mp4 = fmt is None and path.suffix == ".mp4"
    opts = {"movie_timescale": str(math.lcm(time_base.denominator, 48000))} if mp4 else {}
    c = av.open(str(path), "w", format=fmt, container_options=opts)
    vs = c.add_stream("libx264", rate=NTSC)
    vs.width, vs.height, vs.pix_fmt = *SIZE, "yuv420p"
    vs.time_base = vs.codec_context.time_base = time_base
    vs.options = {"preset": "veryfast", "x264-params": x264}
    a = None
    if audio:
        a = c.add_stream(audio, rate=48000)
        a.codec_context.layout, a.codec_context.format = "stereo", "fltp"
    for img, p in zip(footage(len(pts)), pts):
        vf = av.VideoFrame.from_ndarray(img, format="rgb24")
        vf.pts, vf.time_base = p, time_base
        for pk in vs.encode(vf):
            c.mux(pk)
    for pk in vs.encode(None):
        c.mux(pk)
    if a is not None:
        first, size = round(audio_start * 48000), a.codec_context.frame_size
        for k in range(first, round((pts[-1] * time_base + Fraction(1, 5)) * 48000), size):
            x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(k, k + size) / 48000)).astype(np.float32)
            af = av.AudioFrame.from_ndarray(np.stack([x, x]), format="fltp", layout="stereo")
            af.sample_rate, af.pts, af.time_base = 48000, k, Fraction(1, 48000)
            for pk in a.encode(af):
                c.mux(pk)
        for pk in a.encode(None):
            c.mux(pk)
    c.close()
    return path


def ntsc_pts(n: int, start: int = 1) -> list[int]:
    """Frame slots start, start + 1, ... in 1/30000 s (1001 each). Starting one frame in, as B-frame
    encodes often do, the first pts (33.367 ms) is not a whole millisecond."""
    return [1001 * (start + i) for i in range(n)]


def vfr_pts(n: int) -> list[int]:
    """Irregular 90 kHz stamps: gaps of 1/60 s to 1/8 s, first at 3003 (33.367 ms)."""
    gaps = np.random.default_rng(7).choice([1501, 3003, 3003, 4505, 6006, 11261], size=n - 1)
    return [3003] + [3003 + int(s) for s in np.cumsum(gaps)]


# name -> builder(folder) -> source path. Each is a real file the way a camera/transcoder/editor writes it.
CLIPS = {
    "h264_bframes_mp4": lambda d: build(d / "bframes.mp4", ntsc_pts(N), Fraction(1, 30000)),
    "h264_open_gop_mp4_ac3": lambda d: build(
        d / "opengop.mp4", ntsc_pts(N), Fraction(1, 30000), x264=X264 + ":open-gop=1", audio="ac3"
    ),
    "vfr_mp4": lambda d: build(d / "vfr.mp4", vfr_pts(N), Fraction(1, 90000)),
    "start_10s_mp4": lambda d: build(
        d / "start10.mp4", ntsc_pts(N, start=300), Fraction(1, 30000), audio_start=Fraction(10)
    ),
    "mpegts_ac3": lambda d: build(
        d / "clip.ts", [3 * p for p in ntsc_pts(N)], Fraction(1, 90000), fmt="mpegts", audio="ac3"
    ),
    "mp4_edit_list": lambda d: _edit_list_clip(d),
    "h264_bframes_avi": lambda d: build(d / "bframes.avi", list(range(N)), 1 / NTSC),
    "megamind_avi_ac3": lambda d: _megamind_cut(d),
}


def _edit_list_clip(d: Path) -> Path:
    """ffmpeg -ss 0.5 -c copy: the cut lands inside a GOP, so the MP4's edit list skips the frames and the
    audio before it (kept in the file from the keyframe on, flagged discard when read)."""
    src = build(d / "uncut.mp4", ntsc_pts(N), Fraction(1, 30000))
    dst = d / "edit.mp4"
    ffmpeg("-ss", "0.5", "-i", str(src), "-c", "copy", str(dst))
    return dst


def _megamind_cut(d: Path) -> Path:
    """The first 2 s of Megamind.avi, stream-copied (XviD packed B-frames, AC-3 starting with a fragment)."""
    dst = d / "megamind.avi"
    ffmpeg("-i", str(megamind()), "-t", "2", "-c", "copy", str(dst))
    return dst


def make_clip(name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return CLIPS[name](folder)


# -- reading timestamps back -------------------------------------------------------------------------------


def showinfo_pts(path: Path) -> list[Fraction]:
    """ffmpeg's presentation time (s) of each frame of the first video stream, as decoded, unshifted."""
    log = ffmpeg("-copyts", "-i", str(path), "-map", "0:v:0", "-vf", "showinfo", "-f", "null", "-")
    (tb,) = set(re.findall(r"config in time_base: (\d+/\d+)", log))
    return [int(p) * Fraction(tb) for p in re.findall(r"\] n: *\d+ pts: *(-?\d+)", log)]


def video_pts(path: Path) -> list[Fraction]:
    """Presentation time (s) of every frame, in presentation order."""
    with av.open(str(path)) as c:
        if c.format.name == "avi":  # no stored pts: PyAV's frame.pts are libavformat guesses
            return showinfo_pts(path)
        vs = c.streams.video[0]
        return [f.pts * vs.time_base for f in c.decode(vs)]


@dataclass(frozen=True)
class AudioPacket:
    pts: Fraction  # s
    duration: Fraction  # s
    data: bytes
    tick: Fraction  # the stream's time base


def audio_packets(path: Path) -> list[AudioPacket]:
    """Every audio packet with data, in file order (discard-flagged ones of an edit list included)."""
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        s = c.streams.audio[0]
        tb = s.time_base
        return [AudioPacket(p.pts * tb, p.duration * tb, bytes(p), tb) for p in c.demux(s) if p.size]


def _near(src: Fraction, out: Fraction, tick: Fraction) -> bool:
    """out == src when src is a whole number of output ticks, else out is src's nearest tick."""
    return out == src if (src / tick).denominator == 1 else abs(out - src) <= tick / 2


def audio_matches(src: list[AudioPacket], out: list[AudioPacket]) -> list[bool]:
    """Per output packet: same bytes, pts and duration as its source packet (paired in order).

    A source duration that disagrees with the gap to its next packet (Matroska rounds both to 1 ms) cannot be
    stored in MP4, where a packet's duration is that gap: there the gap is what must come out."""
    ok = []
    for i, (a, b) in enumerate(zip(src, out)):
        dur = a.duration
        if i + 1 < len(src) and src[i + 1].pts - a.pts != dur:
            dur = src[i + 1].pts - a.pts
        ok.append(a.data == b.data and _near(a.pts, b.pts, b.tick) and _near(dur, b.duration, b.tick))
    return ok


# -- the indexer's video path and the measurements ----------------------------------------------------------


def copy_through(src: Path, dst: Path, vmod=video) -> dict:
    """src -> VideoReader -> VideoWriter -> dst, audio via the reader's sink; `vmod` is the video module
    (another version of it for before/after figures). Returns the writer's and reader's counters."""
    with vmod.VideoReader(src) as r:
        w = vmod.VideoWriter(dst, r.info.width, r.info.height, r.info.time_base, r.info.rate, r.audio_stream)
        with w:
            for f in r.frames(audio_sink=w.mux_audio):
                w.write(f.image, f.pts)
    return {"audio_dropped": getattr(w, "audio_dropped", 0), "pts_repairs": getattr(r, "pts_repairs", 0)}


def leading_ac3_fragments(packets: list[AudioPacket]) -> int:
    """Packets before the first AC-3 syncframe: what an MP4 cannot store (see video.AC3_SYNC)."""
    n = 0
    while n < len(packets) and packets[n].data[:2] != b"\x0b\x77":
        n += 1
    return n


def timing_report(src: Path, dst: Path) -> dict:
    """Frames and audio packets in/out, frames whose pts changed, audio packets lost or altered, A/V offsets."""
    vin, vout = video_pts(src), video_pts(dst)
    ain, aout = audio_packets(src), audio_packets(dst)
    codec = None
    with av.open(str(src)) as c:
        if c.streams.audio:
            codec = c.streams.audio[0].codec_context.name
    skip = leading_ac3_fragments(ain) if codec in ("ac3", "eac3") and len(aout) < len(ain) else 0
    matches = audio_matches(ain[skip:], aout)
    return {
        "frames_in": len(vin),
        "frames_out": len(vout),
        "pts_mismatches": sum(a != b for a, b in zip(vin, vout)) + abs(len(vin) - len(vout)),
        "max_pts_error_ms": float(max((abs(a - b) for a, b in zip(vin, vout)), default=0) * 1000),
        "audio_in": len(ain),
        "audio_out": len(aout),
        "audio_lost": len(ain) - len(aout),
        "audio_lost_undecodable": skip,  # of audio_lost: leading AC-3 fragments (no syncword)
        "audio_altered": matches.count(False),
        "av_offset_in": (ain[skip].pts - vin[0]) if ain[skip:] else None,  # first kept audio packet - first frame
        "av_offset_out": (aout[0].pts - vout[0]) if aout else None,
    }


# -- tests -------------------------------------------------------------------------------------------------


def _check(report: dict, audio_lost: int = 0, audio_rounding: Fraction = Fraction(0)) -> None:
    assert report["frames_out"] == report["frames_in"] > 0
    assert report["pts_mismatches"] == 0, report
    assert report["audio_out"] > 0 and report["audio_lost"] == audio_lost, report
    assert report["audio_altered"] == 0, report
    assert abs(report["av_offset_out"] - report["av_offset_in"]) <= audio_rounding, report


@pytest.mark.parametrize("name", [n for n in CLIPS if n != "megamind_avi_ac3"])
def test_pts_and_audio_kept(name, tmp_path):
    src = make_clip(name, tmp_path / "src")
    dst = tmp_path / "out.mp4"
    stats = copy_through(src, dst)
    assert stats == {"audio_dropped": 0, "pts_repairs": 0}
    ain, aout = audio_packets(src), audio_packets(dst)
    if name == "mpegts_ac3":  # 90 kHz audio stamps: on the nearest 1/48000 s tick, never further
        _check(timing_report(src, dst), audio_rounding=Fraction(1, 96000))
        assert all(abs(a.pts - b.pts) <= Fraction(1, 96000) for a, b in zip(ain, aout))
    else:
        _check(timing_report(src, dst))
        assert [(a.pts, a.data) for a in ain] == [(b.pts, b.data) for b in aout]  # the first packet included


def test_clips_are_what_they_say(tmp_path):
    """The builders make the cases named: B-frames reordered, a first pts off the millisecond grid, audio
    starting below 0, an edit list that cuts, AVI frames whose demuxed pts are not presentation order."""
    bf = make_clip("h264_bframes_mp4", tmp_path / "a")
    with av.open(str(bf)) as c:
        pk = [p.pts for p in c.demux(video=0) if p.size]
        assert c.streams.video[0].codec_context.has_b_frames and pk != sorted(pk)
    assert video_pts(bf)[0] == Fraction(1001, 30000)
    assert audio_packets(bf)[0].pts < 0  # AAC priming: the first packet starts before 0
    edit = make_clip("mp4_edit_list", tmp_path / "b")
    with av.open(str(edit)) as c:
        flags = [p.is_discard for p in c.demux(video=0) if p.size]
    with av.open(str(edit), options={"ignore_editlist": "1"}) as c:
        raw = sum(1 for p in c.demux(video=0) if p.size)
    assert any(flags) and len(video_pts(edit)) < raw  # frames before the cut are in the file, not shown
    assert audio_packets(edit)[0].pts < 0  # audio from before the cut, kept and skipped by the edit list
    avi = make_clip("h264_bframes_avi", tmp_path / "c")
    with av.open(str(avi)) as c:
        guessed = [f.pts for f in c.decode(video=0)]
    assert guessed != sorted(guessed)
    assert showinfo_pts(avi) == sorted(showinfo_pts(avi))


def test_megamind_avi_through_obfuscate_video(tmp_path, centerface):
    """Real footage end to end: XviD packed B-frames (AVI, no stored pts) and AC-3 whose first packet is a
    fragment without syncword. Every frame keeps ffmpeg's presentation time; every AC-3 syncframe is copied
    with its pts; the fragment, which no decoder can use and MP4 cannot store, is the one packet left out."""
    from facekeys.indexer.pipeline import obfuscate_video

    src = make_clip("megamind_avi_ac3", tmp_path / "src")
    dst = tmp_path / "out.mp4"
    obfuscate_video(src, dst, centerface)
    ain = audio_packets(src)
    assert leading_ac3_fragments(ain) == 1 and len(ain[0].data) < len(ain[1].data)
    with av.open(str(src)) as c:
        with pytest.raises(av.error.InvalidDataError):
            c.streams.audio[0].codec_context.decode(next(p for p in c.demux(audio=0) if p.size))
    rep = timing_report(src, dst)
    _check(rep, audio_lost=1)
    assert rep["frames_in"] == 48 and rep["audio_lost_undecodable"] == 1
    assert rep["av_offset_out"] == rep["av_offset_in"] == Fraction(1536, 48000) - Fraction(125, 2997)

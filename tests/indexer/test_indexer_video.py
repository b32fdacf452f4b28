from fractions import Fraction

import av
import numpy as np
import pytest

from facekeys.errors import InvalidArgument
from facekeys.indexer.video import EncoderConfig, VideoError, VideoReader, VideoWriter
from indexer_media import background, read_all, write_video

VFR_MS = [0, 40, 80, 200, 210, 220, 500, 540, 1000, 1033, 1066, 1500]


def _frames(n, w=320, h=240):
    bg = background(h, w)
    out = []
    for i in range(n):
        f = bg.copy()
        f[20 + 3 * i : 60 + 3 * i, 30:90] = (200, 40, 40)
        out.append(f)
    return out


def _copy(src, dst, cfg=EncoderConfig()):
    with VideoReader(src) as r:
        w = VideoWriter(dst, r.info.width, r.info.height, r.info.time_base, r.info.rate, r.audio_stream, cfg)
        with w:
            for f in r.frames(audio_sink=w.mux_audio):
                w.write(f.image, f.pts)
        return r.info


def _streams(path):
    with av.open(str(path)) as c:
        return {s.type: s.codec_context.name for s in c.streams}


def test_vfr_timestamps_and_audio_copy(tmp_path):
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mp4"
    write_video(src, _frames(len(VFR_MS)), pts_ms=VFR_MS, audio="aac", fmt="matroska")
    info = _copy(src, dst)
    assert info.audio_codec == "aac"
    with VideoReader(dst) as r:
        times = [f.pts * r.info.time_base for f in r.frames()]
    assert times == [Fraction(p, 1000) for p in VFR_MS]  # exact (per-clip checks: test_indexer_timing.py)
    assert _streams(dst) == {"video": "h264", "audio": "aac"}
    with av.open(str(dst)) as c:
        a = c.streams.audio[0]
        n_audio = sum(f.samples for f in c.decode(a))
    assert n_audio >= 48000 * 1.5


def test_pcm_audio_is_reencoded_to_aac(tmp_path):
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mp4"
    write_video(src, _frames(10), audio="pcm_s16le", fmt="matroska")
    _copy(src, dst)
    assert _streams(dst) == {"video": "h264", "audio": "aac"}


def test_odd_resolution(tmp_path):
    src, dst = tmp_path / "odd.avi", tmp_path / "out.mp4"
    frames = _frames(8, w=321, h=241)
    write_video(src, frames, codec="mpeg4")
    info = _copy(src, dst, EncoderConfig(crf=10))
    assert (info.width, info.height) == (321, 241)
    out, _ = read_all(dst)
    assert out[0].shape == (242, 322, 3)  # one replicated row/column added
    assert np.abs(out[3][241].astype(int) - out[3][240]).mean() < 3  # replicated (lossy) row
    assert np.abs(out[3][:241, :321].astype(int) - frames[3]).mean() < 6


def test_writer_checks_and_partial_file(tmp_path):
    dst = tmp_path / "o.mp4"
    w = VideoWriter(dst, 64, 48, Fraction(1, 1000))
    w.write(np.zeros((48, 64, 3), np.uint8), 0)
    with pytest.raises(InvalidArgument):
        w.write(np.zeros((48, 64, 3), np.uint8), 0)  # pts not increasing
    with pytest.raises(InvalidArgument):
        w.write(np.zeros((40, 64, 3), np.uint8), 10)
    assert not dst.exists()  # published only by close()
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidArgument):
        VideoWriter(tmp_path / "missing" / "o.mp4", 64, 48, Fraction(1, 1000))


def _bad_inputs(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, _frames(20))
    data = good.read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "header_only.mp4").write_bytes(data[:64])
    c = av.open(str(tmp_path / "audio.m4a"), "w")
    s = c.add_stream("aac", rate=48000)
    s.codec_context.layout, s.codec_context.format = "mono", "fltp"
    af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    af.sample_rate, af.pts = 48000, 0
    for p in list(s.encode(af)) + list(s.encode(None)):
        c.mux(p)
    c.close()
    return ["missing.mp4", "empty.mp4", "text.mp4", "truncated.mp4", "header_only.mp4", "audio.m4a"]


def test_bad_inputs_raise_video_error(tmp_path):
    for name in _bad_inputs(tmp_path):
        with pytest.raises(VideoError) as e:
            with VideoReader(tmp_path / name) as r:
                list(r.frames())
        assert isinstance(e.value, InvalidArgument), name

"""`facekeys index` end to end: real videos of moving, scaling people -> obfuscated videos + keys in a key store
(embedded and over gRPC), reruns, crashes (killed processes) and a batch of bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from facekeys.errors import InvalidArgument, Unavailable
from facekeys.indexer.sinks import KeySink
from indexer_media import FacePath, read_all, region_diff, render, write_video

pytest.importorskip("torch")

N = 24
PEOPLE = [
    FacePath(x0=10, y0=10, x1=140, y1=40, s0=0.4, s1=0.6),  # walks right, comes closer
    FacePath(head="second", x0=240, y0=110, x1=170, y1=100, s0=0.45, s1=0.32, first=3, last=20),  # enters, leaves
]
START = 1_700_000_000.0


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Source videos with their true face boxes."""
    d = tmp_path_factory.mktemp("media")
    out = {}
    frames, truth = render(N, (320, 240), PEOPLE)
    write_video(d / "walk.mp4", frames, audio="aac")
    out["walk"] = (d / "walk.mp4", truth)
    frames, truth = render(14, (321, 241), [FacePath(x0=40, x1=110, y0=30, y1=40, s0=0.5, s1=0.45)])
    write_video(d / "odd.mkv", frames, codec="mpeg4", fmt="matroska")
    out["odd"] = (d / "odd.mkv", truth)
    frames, truth = render(10, (320, 240), [])
    write_video(d / "noface.mp4", frames)
    out["noface"] = (d / "noface.mp4", truth)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from facekeys.models import save_random_psp_checkpoint

    return save_random_psp_checkpoint(tmp_path_factory.mktemp("psp") / "psp_small.pt", seed=3, small=True)


@pytest.fixture(scope="module")
def encoder(checkpoint):
    from facekeys.models import FaceEncoder

    return FaceEncoder(checkpoint, device="cpu")


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def store_records(store_dir):
    from facekeys.errors import NotFound
    from facekeys.store import KeyStore, StoreConfig

    with KeyStore.open(store_dir, StoreConfig(map_size=1 << 30)) as s:
        out = []
        for k in range(1, s.stats().next_key_id):
            try:
                out.append(s.get(k, include_latent=True))
            except NotFound:
                continue
        return out


def index(argv, capsys=None):
    from facekeys.indexer.cli import main

    rc = main([str(a) for a in argv])
    if capsys is None:
        return rc
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def keys_flags(checkpoint, store):
    return ["--encoder-checkpoint", checkpoint, "--store", store, "--map-size", "1G"]


def box_iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def check_output_obfuscated(src, out, truth, leak_detector):
    """Every true face box differs from the source in every frame it appears; no face is found in the output."""
    ins, tin = read_all(src)
    outs, tout = read_all(out)
    assert len(outs) == len(ins) and tout == pytest.approx(tin, abs=1e-3)
    for i, (a, b) in enumerate(zip(ins, outs)):
        b = b[: a.shape[0], : a.shape[1]]
        for box in truth[i]:
            assert region_diff(a, b, box) > 8.0, f"{out} frame {i}: face {box} not obfuscated"
        assert leak_detector.detect(np.ascontiguousarray(b)) == [], f"{out} frame {i}: a face is visible"


def check_store_matches(records, src, truth, camera, start, tracks_expected):
    """Keys of `src` in the store: one per track, boxes covering every true face box, times and ids right."""
    vid = sha256(src)
    mine = [r for r in records if r.where.video_id == vid]
    assert len(mine) == tracks_expected
    assert len({r.where.track_id for r in mine}) == len(mine)  # no duplicate keys
    _, times = read_all(src)
    for r in mine:
        w = r.where
        assert w.camera_id == camera and w.track_id.startswith(vid + ":")
        assert r.attributes["source_digest"] == vid and w.track_id == f"{vid}:{r.attributes['track']}"
        frames = w.boxes[:, 0].tolist()
        assert frames == list(range(frames[0], frames[-1] + 1))  # every frame of the track
        assert w.t_start == pytest.approx(start + times[frames[0]], abs=1e-3)
        assert w.t_end == pytest.approx(start + times[frames[-1]], abs=1e-3)
        assert r.obfuscation.method == "mosaic" and r.latent.shape == (18, 512)
    for f, boxes in enumerate(truth):  # each true face is covered by a stored box in that frame
        for tb in boxes:
            stored = [tuple(b[1:]) for r in mine for b in r.where.boxes if b[0] == f]
            assert any(box_iou(tb, sb) > 0.4 for sb in stored), f"frame {f}: true face {tb} has no stored box"


# -- end to end ---------------------------------------------------------------------------------------------
def test_embedded_manifest_end_to_end_and_rerun(media, checkpoint, encoder, centerface, leak_detector, tmp_path, capsys):
    from facekeys.indexer import keys_for_tracks, obfuscate_video

    walk, truth_walk = media["walk"]
    odd, truth_odd = media["odd"]
    manifest = tmp_path / "sources.csv"
    manifest.write_text(f"path,camera_id,start_time\n{walk},gate-1,{START}\n{odd},lobby 2,\n")
    out, store = tmp_path / "out", tmp_path / "store"
    rc, stdout, stderr = index(["--manifest", manifest, "--out-dir", out, *keys_flags(checkpoint, store)], capsys)
    assert rc == 0, stdout + stderr
    assert "2 indexed, 0 skipped, 0 failed" in stdout and "odd resolution 321x241" in stdout

    vw, vo = sha256(walk), sha256(odd)
    out_walk, out_odd = out / "gate-1" / f"walk-{vw[:12]}.mp4", out / "lobby_2" / f"odd-{vo[:12]}.mp4"
    check_output_obfuscated(walk, out_walk, truth_walk, leak_detector)
    check_output_obfuscated(odd, out_odd, truth_odd, leak_detector)

    records = store_records(store)
    assert len(records) == 3
    check_store_matches(records, walk, truth_walk, "gate-1", START, 2)
    check_store_matches(records, odd, truth_odd, "lobby 2", 0.0, 1)
    assert {r.attributes["time"] for r in records if r.where.video_id == vw} == {"absolute"}
    assert {r.encoder_id for r in records} == {encoder.encoder_id}

    # The stored latents are exactly the pipeline's keys for these tracks.
    tracks = sorted(obfuscate_video(walk, tmp_path / "ref.mp4", centerface), key=lambda t: t.track_id)
    ref = keys_for_tracks(tracks, encoder)  # (2, 18, 512)
    got = {r.where.track_id: r for r in records if r.where.video_id == vw}
    for t, lat in zip(tracks, ref):
        r = got[f"{vw}:{t.track_id}"]
        np.testing.assert_allclose(r.latent, lat, atol=1e-4)
        np.testing.assert_array_equal(r.where.boxes, np.asarray(t.boxes))

    # Rerun: everything skipped, no new keys, journal untouched beyond reading.
    rc, stdout, _ = index(["--manifest", manifest, "--out-dir", out, *keys_flags(checkpoint, store)], capsys)
    assert rc == 0 and "0 indexed, 2 skipped" in stdout and stdout.count("already indexed") == 2
    assert len(store_records(store)) == 3
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.keys.npz"))


def write_faststart(path, frames):
    """H.264 MP4 with its index (moov) in front, as cameras that stream to disk write it."""
    import av

    c = av.open(str(path), "w", options={"movflags": "+faststart"})
    vs = c.add_stream("libx264", rate=25)
    vs.width, vs.height, vs.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    vs.options = {"preset": "ultrafast", "crf": "12"}
    for f in frames:
        for pk in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            c.mux(pk)
    for pk in vs.encode(None):
        c.mux(pk)
    c.close()


def test_bad_inputs_are_reported_and_the_batch_goes_on(media, checkpoint, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    walk = media["walk"][0]
    data = walk.read_bytes()
    (d / "a_good.mp4").write_bytes(data)
    (d / "b_empty.mp4").write_bytes(b"")
    (d / "c_text.mp4").write_text("this is not a video\n")
    (d / "d_truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "e_noface.mp4").write_bytes(media["noface"][0].read_bytes())
    (d / "f_odd.mkv").write_bytes(media["odd"][0].read_bytes())
    (d / "g_copy_of_good.mp4").write_bytes(data)
    write_video(d / "h_tiny.mp4", [np.zeros((16, 16, 3), np.uint8)] * 3)
    write_faststart(d / "i_cut.mp4", render(N, (320, 240), PEOPLE[:1])[0])  # index first: readable when cut
    cut = (d / "i_cut.mp4").read_bytes()
    (d / "i_cut.mp4").write_bytes(cut[: len(cut) * 6 // 10])
    (d / "notes.txt").write_text("not a video extension: not picked up from a folder")
    out, store = tmp_path / "out", tmp_path / "store"
    argv = [d, "--camera", "cam-9", "--out-dir", out, *keys_flags(checkpoint, store), "--report", tmp_path / "r.json"]
    rc, stdout, stderr = index(argv, capsys)
    assert rc == 1
    errors = [line for line in stderr.splitlines() if line.startswith("facekeys: error:")]
    assert len(errors) == 4, stderr
    for name, why in [("b_empty.mp4", "empty file (0 bytes)"), ("c_text.mp4", "as a video"),
                      ("d_truncated.mp4", "video"), ("h_tiny.mp4", "too small for face detection")]:
        assert sum(name in e and why in e for e in errors) == 1, (name, errors)
    assert "4 indexed, 1 skipped, 4 failed" in stdout, stdout
    report = {Path(v["path"]).name: v for v in json.loads((tmp_path / "r.json").read_text())["videos"]}
    assert report["a_good.mp4"]["status"] == "done" and report["a_good.mp4"]["keys"] == 2
    assert report["e_noface.mp4"]["status"] == "done" and report["e_noface.mp4"]["notes"] == ["no faces found"]
    assert report["f_odd.mkv"]["status"] == "done" and report["f_odd.mkv"]["keys"] == 1
    assert report["g_copy_of_good.mp4"]["status"] == "skipped" and "same content" in report["g_copy_of_good.mp4"]["reason"]
    assert "notes.txt" not in report
    cut = report["i_cut.mp4"]  # the readable part is indexed, and the cut is reported
    assert cut["status"] == "done" and 0 < cut["frames"] < N and cut["keys"] == 1
    assert cut["notes"] == [f"decoded {cut['frames']} of the {N} frames the container announces (truncated?)"]
    assert len(store_records(store)) == 4
    # A rerun reports the same failures again (they are retried) and skips the rest.
    rc, stdout, stderr = index(argv, capsys)
    assert rc == 1 and "0 indexed, 5 skipped, 4 failed" in stdout and stderr.count("facekeys: error:") == 4
    assert len(store_records(store)) == 4


# -- crashes ------------------------------------------------------------------------------------------------
CRASH = textwrap.dedent("""
    import os, sys
    from facekeys.indexer import index, journal
    mode = sys.argv[1]
    if mode == "after-enrol":  # the store has the keys, the journal never hears of it
        orig = journal.Journal.append
        def append(self, digest, event, **kw):
            if event == "acked":
                os._exit(17)
            return orig(self, digest, event, **kw)
        journal.Journal.append = append
    elif mode == "mid-video":  # killed while the obfuscated video is being written
        seen = [0]
        def frame(self):
            seen[0] += 1
            if seen[0] == 10:
                os._exit(17)
        index.Progress.frame = frame
    from facekeys.indexer.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def crash_run(tmp_path, mode, argv):
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    p = subprocess.run([sys.executable, str(script), mode, *map(str, argv)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 17, p.stdout + p.stderr


def test_killed_between_enrol_and_journal_then_rerun_has_no_duplicates(media, checkpoint, tmp_path, capsys):
    walk, truth = media["walk"]
    out, store = tmp_path / "out", tmp_path / "store"
    argv = [walk, "--camera", "gate-1", "--start-time", START, "--out-dir", out, *keys_flags(checkpoint, store)]
    crash_run(tmp_path, "after-enrol", argv)
    assert len(store_records(store)) == 2  # the keys did reach the store before the process died
    rc, stdout, stderr = index(argv, capsys)
    assert rc == 0, stdout + stderr
    assert "resumed after an interruption" in stdout
    records = store_records(store)
    check_store_matches(records, walk, truth, "gate-1", START, 2)  # still 2: found, not re-sent
    events = [json.loads(line) for line in (out / ".facekeys-journal" / f"{sha256(walk)}.jsonl").read_text().splitlines()]
    assert [e["ev"] for e in events] == ["start", "spooled", "enrolling", "acked", "done"]
    assert events[3]["recovered"] is True and sorted(events[3]["key_ids"]) == [1, 2]


def test_killed_mid_video_then_rerun_reprocesses(media, checkpoint, leak_detector, tmp_path, capsys):
    walk, truth = media["walk"]
    out, store = tmp_path / "out", tmp_path / "store"
    argv = [walk, "--camera", "gate-1", "--out-dir", out, *keys_flags(checkpoint, store)]
    crash_run(tmp_path, "mid-video", argv)
    assert not [p for p in out.rglob("*.mp4")]  # only the .partial is there
    rc, stdout, _ = index(argv, capsys)
    assert rc == 0 and "1 indexed" in stdout
    assert not list(out.rglob("*.partial"))
    check_output_obfuscated(walk, out / "gate-1" / f"walk-{sha256(walk)[:12]}.mp4", truth, leak_detector)
    check_store_matches(store_records(store), walk, truth, "gate-1", 0.0, 2)


# -- server mode ----------------------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path):
    from facekeys.server import KeyStoreServer, ServerConfig
    from facekeys.store import StoreConfig

    srv = KeyStoreServer(ServerConfig(data_dir=tmp_path / "srv", port=0, metrics_port=-1,
                                      store=StoreConfig(map_size=1 << 30))).start()
    yield srv
    srv.stop()


def server_records(address):
    from facekeys.client import Client

    with Client(address) as c:
        return [c.get(k, include_latent=True) for k in range(1, c.stats().next_key_id)]


class Interrupted(BaseException):
    """Stands in for a crash in-process (not an Exception: the per-video error handling lets it through)."""


def interrupt_at(monkeypatch, event):
    from facekeys.indexer import journal

    orig = journal.Journal.append

    def append(self, digest, ev, **kw):
        if ev == event:
            raise Interrupted(ev)
        return orig(self, digest, ev, **kw)

    monkeypatch.setattr(journal.Journal, "append", append)


def test_server_streaming_rerun_and_crash(media, checkpoint, server, leak_detector, tmp_path, capsys, monkeypatch):
    walk, truth = media["walk"]
    odd, truth_odd = media["odd"]
    out = tmp_path / "out"
    argv = ["--camera", "gate-1", "--out-dir", out, "--encoder-checkpoint", checkpoint, "--server", server.address]
    rc, stdout, stderr = index([walk, *argv], capsys)
    assert rc == 0, stdout + stderr
    check_store_matches(server_records(server.address), walk, truth, "gate-1", 0.0, 2)
    rc, stdout, _ = index([walk, *argv], capsys)
    assert rc == 0 and "already indexed" in stdout and len(server_records(server.address)) == 2

    interrupt_at(monkeypatch, "acked")  # the server stored the keys; the journal does not know
    with pytest.raises(Interrupted):
        index([odd, *argv])
    monkeypatch.undo()
    assert len(server_records(server.address)) == 3
    rc, stdout, _ = index([odd, *argv], capsys)
    assert rc == 0 and "resumed" in stdout
    records = server_records(server.address)
    assert len(records) == 3
    check_store_matches(records, odd, truth_odd, "gate-1", 0.0, 1)
    check_output_obfuscated(odd, out / "gate-1" / f"odd-{sha256(odd)[:12]}.mp4", truth_odd, leak_detector)


def test_server_unreachable_stops_the_run(media, checkpoint, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match="not reachable"):
        index([media["walk"][0], "--camera", "c", "--out-dir", tmp_path / "o", "--encoder-checkpoint", checkpoint,
               "--server", f"127.0.0.1:{port}", "--connect-timeout", "1"])


# -- without read-back rights (a gateway token): at most once --------------------------------------------------
class NoReadBack(KeySink):
    """An embedded store seen through a gateway token: enrol only, no Stats, no Get."""

    def __init__(self, path):
        from facekeys.indexer.sinks import EmbeddedSink
        from facekeys.store import StoreConfig

        self.inner = EmbeddedSink(path, StoreConfig(map_size=1 << 30))
        self.name = "no-read-back"

    def enroll(self, batches):
        return self.inner.enroll(batches)

    def watermark(self):
        return None

    def close(self):
        self.inner.close()


def test_without_read_back_an_interrupted_enrolment_is_reported_not_resent(media, encoder, centerface, tmp_path,
                                                                          monkeypatch):
    from facekeys.indexer.index import IndexConfig, Indexer, Source

    walk = media["walk"][0]
    cfg = IndexConfig(out_dir=tmp_path / "out")
    src = [Source(walk, "gate-1")]

    def run(**kw):
        sink = NoReadBack(tmp_path / "store")
        try:
            return Indexer(IndexConfig(out_dir=tmp_path / "out", **kw), encoder=encoder, sink=sink,
                           detector=centerface).run(src)
        finally:
            sink.close()

    interrupt_at(monkeypatch, "acked")
    with pytest.raises(Interrupted):
        run()
    monkeypatch.undo()
    assert len(store_records(tmp_path / "store")) == 2
    r = run()
    assert not r.ok and r.results[0].status == "failed" and "may or may not be stored" in r.results[0].reason
    assert len(store_records(tmp_path / "store")) == 2  # at most once: nothing re-sent
    r = run(resend_unconfirmed=True)  # the operator accepts duplicates
    assert r.ok and r.results[0].keys == 2
    assert len(store_records(tmp_path / "store")) == 4
    assert cfg.journal == tmp_path / "out" / ".facekeys-journal"


# -- arguments and helpers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, match", [
    (["x.mp4", "--out-dir", "o", "--no-keys"], "--camera is required"),
    (["--out-dir", "o", "--no-keys"], "no sources"),
    (["x.mp4", "--camera", "c", "--out-dir", "o"], "--encoder-checkpoint is required"),
    (["x.mp4", "--camera", "c", "--out-dir", "o", "--encoder-checkpoint", "p.pt"], "exactly one of --store"),
    (["x.mp4", "--camera", "c", "--out-dir", "o", "--no-keys", "--store", "s"], "--no-keys takes no"),
    (["x.mp4", "--camera", "c", "--out-dir", "o", "--no-keys", "--threshold", "1.5"], "threshold"),
    (["x.mp4", "--camera", "c", "--out-dir", "o", "--encoder-checkpoint", "missing.pt", "--store", "s"], "not a file"),
])
def test_argument_errors(argv, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArgument, match=match):
        index(argv)


def test_top_level_cli_prints_one_error_line(tmp_path, capsys):
    from facekeys.cli import main

    assert main(["index", "x.mp4", "--out-dir", str(tmp_path), "--no-keys"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["facekeys: error: --camera is required for SRC arguments (or list them in a --manifest)"]


def test_no_keys_mode_then_keys_mode(media, checkpoint, tmp_path, capsys, leak_detector):
    walk, truth = media["walk"]
    out, store = tmp_path / "out", tmp_path / "store"
    rc, stdout, stderr = index([walk, "--camera", "c", "--out-dir", out, "--no-keys", "--progress"], capsys)
    assert rc == 0 and "2 face tracks" in stdout
    assert "videos: 100%" in stderr and f"/{N} [" in stderr  # overall bar and the per-video frame bar
    check_output_obfuscated(walk, out / "c" / f"walk-{sha256(walk)[:12]}.mp4", truth, leak_detector)
    rc, stdout, _ = index([walk, "--camera", "c", "--out-dir", out, "--no-keys"], capsys)
    assert "already indexed" in stdout
    rc, stdout, _ = index([walk, "--camera", "c", "--out-dir", out, *keys_flags(checkpoint, store)], capsys)
    assert rc == 0 and "1 indexed" in stdout and len(store_records(store)) == 2  # keys were never made: now


def test_manifest_formats(tmp_path):
    from facekeys.indexer.cli import read_manifest

    (tmp_path / "m.csv").write_text("path,camera_id,start_time\nv/a.mp4,cam-1,1700000000.5\n/abs/b.mp4,cam-2,\n")
    a, b = read_manifest(tmp_path / "m.csv")
    assert (a.path, a.camera_id, a.start_time) == (tmp_path / "v/a.mp4", "cam-1", 1700000000.5)
    assert (b.path, b.start_time) == (Path("/abs/b.mp4"), None)
    (tmp_path / "m.jsonl").write_text('{"path": "a.mp4", "camera_id": "c"}\n\n{"path": "b.mp4", "camera_id": "d", "start_time": 5}\n')
    assert [s.start_time for s in read_manifest(tmp_path / "m.jsonl")] == [None, 5.0]
    for name, text, match in [
        ("h.csv", "file,camera\nx,y\n", "header must name path and camera_id"),
        ("t.csv", "path,camera_id,start_time\nx,y,yesterday\n", "not a number"),
        ("c.csv", "path,camera_id\nx,\n", "required"),
        ("j.jsonl", "[1, 2]\n", "want an object"),
        ("k.jsonl", "{broken\n", "not JSON"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(InvalidArgument, match=match):
            read_manifest(tmp_path / name)


def test_folders_skip_our_own_output(tmp_path):
    from facekeys.indexer.cli import expand_sources
    from facekeys.indexer.index import Source

    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "out" / "cam").mkdir(parents=True)
    for p in ("in/a.MP4", "in/sub/b.mkv", "in/out/cam/a-123.mp4", "in/readme.md"):
        (tmp_path / p).write_bytes(b"x")
    got = expand_sources([Source(tmp_path / "in", "c")], exclude=[tmp_path / "in" / "out"])
    assert [s.path.relative_to(tmp_path).as_posix() for s in got] == ["in/a.MP4", "in/sub/b.mkv"]


def test_gateway_token_server_is_at_most_once(media, checkpoint, tmp_path, capsys, monkeypatch):
    """A real authenticated server: the gateway token may enrol but not Stats/Get, so an interrupted enrolment
    is reported, not re-sent; an admin token then reconciles it exactly."""
    from facekeys.security.config import SecurityConfig
    from facekeys.security.credentials import CredentialStore
    from facekeys.server import KeyStoreServer, ServerConfig
    from facekeys.store import StoreConfig

    creds = CredentialStore(tmp_path / "credentials.json")
    tokens = {}
    for name, role in (("gw", "gateway"), ("ops", "admin")):
        (tmp_path / f"{name}.token").write_text(creds.issue(name, [role])[1] + "\n")
    (tmp_path / "audit.key").write_bytes(os.urandom(32).hex().encode())
    security = SecurityConfig(credentials_file=tmp_path / "credentials.json", audit_log=tmp_path / "audit.log",
                              audit_key_file=tmp_path / "audit.key")
    srv = KeyStoreServer(ServerConfig(data_dir=tmp_path / "srv", port=0, metrics_port=-1,
                                      store=StoreConfig(map_size=1 << 30), security=security)).start()
    try:
        walk = media["walk"][0]
        argv = [walk, "--camera", "gate-1", "--out-dir", tmp_path / "out", "--encoder-checkpoint", checkpoint,
                "--server", srv.address, "--token-file"]
        interrupt_at(monkeypatch, "acked")
        with pytest.raises(Interrupted):
            index([*argv, tmp_path / "gw.token"])
        monkeypatch.undo()
        rc, stdout, stderr = index([*argv, tmp_path / "gw.token"], capsys)
        assert rc == 1 and "may or may not be stored" in stderr and "admin role" in stderr, stderr
        from facekeys.client import Client

        with Client(srv.address, token=(tmp_path / "ops.token").read_text().strip()) as admin:
            assert admin.stats().keys == 2  # stored once, not re-sent
            rc, stdout, stderr = index([*argv, tmp_path / "ops.token"], capsys)
            assert rc == 0 and "resumed" in stdout, stdout + stderr
            assert admin.stats().keys == 2
    finally:
        srv.stop()

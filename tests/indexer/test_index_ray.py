"""`facekeys index --ray`: a real local Ray cluster (two worker processes on 127.0.0.1), one worker killed with
SIGKILL mid-video, against a single-process run of the same sources: the same keys in the key store (none
missing, none twice), the same complete output videos, no `.partial` left; a rerun indexes nothing again.

Sources: short clips cut from opencv-doc's Megamind.avi (tests/realmedia.py), keys to real `facekeys serve`
processes on loopback (one per run)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import realmedia
from fkhelpers import start_server


N_FRAMES = 40
SIZE = (360, 264)  # w, h: Megamind's 720x528 halved
STARTS = (30, 100, 160)  # stretches of Megamind with faces


def cut(src: Path, dst: Path, start: int, n: int) -> Path:
    """Frames [start, start + n) of `src`, halved, as H.264 MP4 at 25 fps (no audio)."""
    with av.open(str(src)) as c:
        frames = []
        for i, fr in enumerate(c.decode(video=0)):
            if i >= start:
                frames.append(cv2.resize(fr.to_ndarray(format="rgb24"), SIZE, interpolation=cv2.INTER_AREA))
            if len(frames) == n:
                break
    with av.open(str(dst), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        vs.options = {"crf": "16", "preset": "veryfast"}
        for img in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    return dst


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    src = realmedia.opencv_doc_data() / "Megamind.avi"
    return [cut(src, d / f"mm{s}.mp4", s, N_FRAMES) for s in STARTS]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from facekeys.models import save_random_psp_checkpoint

    return save_random_psp_checkpoint(tmp_path_factory.mktemp("psp") / "psp_small.pt", seed=3, small=True)


@pytest.fixture
def servers(tmp_path):
    procs = []

    def start(name):
        proc, address = start_server(tmp_path / name)
        procs.append(proc)
        return address

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=30)


def records(address):
    from facekeys.client import Client

    with Client(address) as c:
        return [c.get(k, include_latent=True) for k in range(1, c.stats().next_key_id)]


def by_track(recs) -> dict:
    out = {}
    for r in recs:
        key = (r.where.video_id, r.where.track_id)
        assert key not in out, f"key {key} stored twice"
        out[key] = r
    return out


def decoded(path: Path) -> tuple[list[int], np.ndarray]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        return [f.pts for f in frames], np.stack([f.to_ndarray(format="rgb24") for f in frames])  # (N, H, W, 3)


def cli(argv, capsys):
    from facekeys.indexer.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_ray_cluster_with_a_worker_killed_mid_video_matches_one_process(clips, checkpoint, servers, tmp_path, capsys,
                                                                       leak_detector):
    from facekeys.indexer import IndexConfig, Indexer, ServerSink
    from facekeys.indexer.cli import build_parser, expand_sources, index_config
    from facekeys.indexer.cluster import RayConfig, RayExtractor
    from facekeys.indexer.index import Source, output_path
    from facekeys.indexer.journal import file_digest

    common = ["--camera", "cam-7", "--encoder-checkpoint", checkpoint, "--no-progress"]
    # 1. the reference: one process, its own key store
    ref_srv = servers("srv-ref")
    rc, out, err = cli([*clips, *common, "--out-dir", tmp_path / "ref", "--server", ref_srv], capsys)
    assert rc == 0, out + err
    ref = by_track(records(ref_srv))
    assert len(ref) >= len(clips)  # Megamind's faces: keys for every clip

    # 2. a local Ray cluster with two workers; the first worker to report frames of the second clip is killed
    ray_srv = servers("srv-ray")
    args = build_parser().parse_args([str(a) for a in [*clips, *common, "--out-dir", tmp_path / "ray", "--server", ray_srv]])
    cfg: IndexConfig = index_config(args)
    sources = expand_sources([Source(Path(c), "cam-7") for c in clips], [])
    target = file_digest(clips[1])
    killed: dict = {}
    begun: dict[str, list[int]] = {}  # video_id -> pids of the workers that began it

    seen = {"frames": 0}  # frames of the target reported by its first worker

    def watch(ev):
        if ev.kind == "begin":
            begun.setdefault(ev.video_id, []).append(ev.pid)
        elif ev.video_id == target and not killed and ev.kind == "frames":
            seen["frames"] += ev.frames
            if seen["frames"] >= 5:  # well into the video, the output not written yet
                out = output_path(cfg.out_dir, sources[1], target)
                killed.update(pid=ev.pid, frames=seen["frames"], final=out.exists())
                os.kill(ev.pid, signal.SIGKILL)

    with RayExtractor(RayConfig("local", num_cpus=2), checkpoint=checkpoint, watch=watch) as ex:
        sink = ServerSink(ray_srv)
        try:
            run = Indexer(cfg, sink=sink, extractor=ex).run(sources)
        finally:
            sink.close()
        workers = set(ex.workers)
        retried = set(ex.retried)
    assert run.ok, [(r.path, r.reason) for r in run.results]
    assert [r.status for r in run.results] == ["done"] * len(clips)
    # the kill happened mid-video: frames reported, fewer than the clip has, no output under the final name yet
    assert killed and 5 <= killed["frames"] < N_FRAMES and not killed["final"], killed
    assert retried == {target} and len(begun[target]) == 2 and begun[target][0] == killed["pid"] != begun[target][1]
    assert len(workers) >= 2  # the retry ran on the other worker or on a new process, never on the killed one
    assert "redone after a cluster worker was lost mid-video" in run.results[1].notes

    # 3. the same keys, each once (a duplicate would have failed by_track), with the same content
    got = by_track(records(ray_srv))
    assert got.keys() == ref.keys()
    for k, a in ref.items():
        b = got[k]
        assert (b.where.camera_id, b.where.t_start, b.where.t_end) == (a.where.camera_id, a.where.t_start, a.where.t_end)
        assert np.array_equal(b.where.boxes, a.where.boxes), k
        assert b.attributes == a.attributes and b.encoder_id == a.encoder_id
        np.testing.assert_allclose(b.latent, a.latent, atol=1e-4)

    # 4. the same complete output videos; nothing half-written left behind
    assert not list((tmp_path / "ray").rglob("*.partial"))
    for r_ref, r_ray in zip(sorted((tmp_path / "ref").rglob("*.mp4")), sorted((tmp_path / "ray").rglob("*.mp4"))):
        assert r_ref.name == r_ray.name
        pts_a, fa = decoded(r_ref)
        pts_b, fb = decoded(r_ray)
        assert len(pts_a) == N_FRAMES and pts_a == pts_b
        # The same video up to float noise: the workers' detector runs with one thread, so a held or interpolated
        # box can land a pixel off and shift a mosaic block (differences up to ~30 there), nothing more.
        diff = np.abs(fa.astype(np.int16) - fb)
        assert diff.mean() < 1.0, (r_ray.name, float(diff.mean()))
        for i, frame in enumerate(fb):  # and obfuscated: no face found in any frame the Ray run wrote
            assert leak_detector.detect(np.ascontiguousarray(frame)) == [], f"{r_ray.name} frame {i}: a face is visible"
    assert len(list((tmp_path / "ray").rglob("*.mp4"))) == len(clips)
    journal = tmp_path / "ray" / ".facekeys-journal" / f"{target}.jsonl"
    assert [json.loads(line)["ev"] for line in journal.read_text().splitlines()] == \
        ["start", "spooled", "enrolling", "acked", "done"]

    # 5. the CLI on a fresh one-worker local cluster, same journal: every video already indexed, no new key
    rc, out, err = cli([*clips, *common, "--out-dir", tmp_path / "ray", "--server", ray_srv, "--ray", "local",
                        "--ray-local-cpus", "1", "--report", tmp_path / "again.json"], capsys)
    assert rc == 0, out + err
    assert [v["status"] for v in json.loads((tmp_path / "again.json").read_text())["videos"]] == ["skipped"] * 3
    assert "ray: 1 node(s)" in out and "summary: 3 videos: 0 indexed, 3 skipped" in out
    assert len(records(ray_srv)) == len(ref)


@pytest.mark.parametrize("flags, match", [
    (["--ray-local-cpus", "2"], "--ray-local-cpus goes with --ray local"),
    (["--ray", "auto", "--ray-local-cpus", "2"], "num_cpus"),
    (["--ray", "local", "--ray-cpus", "0"], "cpus_per_task must be > 0"),
    (["--ray", "local", "--ray-gpus", "-1"], "gpus_per_task must be >= 0"),
    (["--ray", "local", "--ray-retries", "-1"], "max_retries must be in 0..100"),
])
def test_ray_argument_errors_fail_before_any_cluster_starts(flags, match, tmp_path):
    import ray

    from facekeys.errors import InvalidArgument
    from facekeys.indexer.cli import main

    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    with pytest.raises(InvalidArgument, match=match):
        main([str(video), "--camera", "c", "--out-dir", str(tmp_path / "o"), "--no-keys", *flags])
    assert not ray.is_initialized()

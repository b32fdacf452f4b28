"""Indexer throughput and leak benchmark: facekeys.indexer.obfuscate_video next to deface on the same clip.

Builds a 720p clip from a real face image (skimage's astronaut, three heads of different sizes moving and
scaling), then for every variant: one warm-up run on a short clip, `--repeats` timed runs on the full clip
(decode + detect + track + obfuscate + H.264 encode + write, end to end), and a leak count: frames where
CenterFace (threshold 0.5) still finds a face in the output where the input had one.

    .venv/bin/python benchmarks/bench_indexer.py [--frames 60] [--repeats 3] [--no-deface] [--no-keys]

Both tools run CenterFace on onnxruntime's CPU provider with its default thread count (physical cores).
Unless --no-keys: a `facekeys index` row (the journalled batch indexer: hashing, obfuscation, keys from a
small random-init pSp encoder, enrolment into an embedded store) in the same round-robin, and key
extraction (align + encode every track's best crop) timed on its own. Random weights: the timing is real
for the small architecture only; the full-size encoder's cost is in RESULTS.md.
Prints a Markdown table; copy it into RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from facekeys.indexer.detect import DetectorConfig, make_detector
from facekeys.indexer.pipeline import EncoderConfig, ObfuscationConfig, keys_for_tracks, obfuscate_video
from facekeys.indexer.video import VideoReader

HEAD = (140, 10, 180, 220)  # head crop of skimage's 512x512 astronaut


def build_clip(path: Path, n: int, size=(1280, 720), fps: int = 25) -> None:
    from skimage.data import astronaut

    x, y, w, h = HEAD
    head = astronaut()[y : y + h, x : x + w]
    other = np.ascontiguousarray(head[:, ::-1, [0, 2, 1]])
    W, H = size
    yy, xx = np.mgrid[0:H, 0:W]
    bg = np.clip(np.stack([60 + 80 * xx / W, 90 + 60 * yy / H, 120 + 0 * xx], -1)
                 + np.random.default_rng(0).normal(0, 4, (H, W, 3)), 0, 255).astype(np.uint8)
    # (image, x0, y0, x1, y1, scale0, scale1): a close face, a mid one, a small far one
    paths = [(head, 80, 200, 700, 260, 1.2, 1.5), (other, 1000, 300, 700, 250, 0.8, 0.6), (head, 500, 40, 640, 60, 0.35, 0.3)]
    c = av.open(str(path), "w")
    vs = c.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
    vs.options = {"preset": "ultrafast", "crf": "16"}
    for i in range(n):
        img = bg.copy()
        a = i / max(1, n - 1)
        for src, x0, y0, x1, y1, s0, s1 in paths:
            s = s0 + (s1 - s0) * a
            p = cv2.resize(src, (round(src.shape[1] * s), round(src.shape[0] * s)), interpolation=cv2.INTER_AREA)
            px, py = round(x0 + (x1 - x0) * a), round(y0 + (y1 - y0) * a)
            img[py : py + p.shape[0], px : px + p.shape[1]] = p[: H - py, : W - px]
        for pk in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(pk)
    for pk in vs.encode(None):
        c.mux(pk)
    c.close()


def frames_of(path: Path) -> list[np.ndarray]:
    with VideoReader(path) as r:
        return [f.image for f in r.frames()]


def count_leaks(src: Path, dst: Path, judge) -> tuple[int, int]:
    """(frames whose output still shows a face, frames whose input shows one)."""
    ins, outs = frames_of(src), frames_of(dst)
    with_face = leaked = 0
    for a, b in zip(ins, outs):
        if judge.detect(a):
            with_face += 1
            if judge.detect(np.ascontiguousarray(b[: a.shape[0], : a.shape[1]])):
                leaked += 1
    return leaked, with_face


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished children (deface's ffmpeg pipes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_ours(src, dst, detector, obf, enc):
    return obfuscate_video(src, dst, detector, obfuscation_cfg=obf, encoder_cfg=enc)


def run_index(src, dst, root: Path, detector, encoder) -> None:
    """The whole `facekeys index` path for one video into a fresh embedded store."""
    import shutil

    from facekeys.indexer import EmbeddedSink, IndexConfig, Indexer, Source
    from facekeys.store import StoreConfig

    sink = EmbeddedSink(root / "store", StoreConfig(map_size=1 << 30))
    try:
        run = Indexer(IndexConfig(out_dir=root / "out"), encoder=encoder, sink=sink, detector=detector).run(
            [Source(src, "bench")])
    finally:
        sink.close()
    if not run.ok:
        raise RuntimeError(f"facekeys index failed: {run.results[0].reason}")
    shutil.copyfile(run.results[0].output, dst)  # for the leak count


def run_deface(src, dst, centerface, scale=None):
    from deface.deface import video_detect

    centerface.in_shape = scale
    with contextlib.redirect_stderr(io.StringIO()):  # tqdm bar
        video_detect(str(src), str(dst), centerface, threshold=0.2, enable_preview=False, cam=False, nested=False,
                     replacewith="blur", mask_scale=1.3, ellipse=True, draw_scores=False,
                     ffmpeg_config={"codec": "libx264"}, keep_audio=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-deface", action="store_true")
    ap.add_argument("--no-keys", action="store_true", help="skip the facekeys index row and the key timing")
    ap.add_argument("--json", type=Path, help="also write raw results here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_indexer_"))
    clip, warm = tmp / "clip720.mp4", tmp / "warm.mp4"
    build_clip(clip, args.frames)
    build_clip(warm, 8)
    judge = make_detector(DetectorConfig(threshold=0.5))

    variants = {}
    ours = make_detector(DetectorConfig())
    ours_half = make_detector(DetectorConfig(upscale=0.5))
    variants["facekeys: full-res detection, mosaic, x264 veryfast"] = lambda s, d: run_ours(s, d, ours, ObfuscationConfig(), EncoderConfig())
    variants["facekeys: full-res detection, blur, x264 medium"] = lambda s, d: run_ours(s, d, ours, ObfuscationConfig(method="blur"), EncoderConfig(preset="medium"))
    variants["facekeys: detection at 0.5x (640x360), mosaic, veryfast"] = lambda s, d: run_ours(s, d, ours_half, ObfuscationConfig(), EncoderConfig())
    encoder = None
    if not args.no_keys:
        import itertools

        from facekeys.models import FaceEncoder, save_random_psp_checkpoint

        encoder = FaceEncoder(save_random_psp_checkpoint(tmp / "psp_small.pt", seed=0, small=True), device="cpu")
        runs = itertools.count()
        variants["facekeys index: full-res, mosaic, veryfast + keys (small random pSp) + embedded enrol"] = (
            lambda s, d: run_index(s, d, tmp / f"index{next(runs)}", ours, encoder))
    if not args.no_deface:
        import deface
        from deface.centerface import CenterFace

        with contextlib.redirect_stdout(io.StringIO()):
            cf = CenterFace(backend="onnxrt")
        variants[f"deface {deface.__version__}: defaults (thresh 0.2, blur, libx264 via ffmpeg)"] = lambda s, d: run_deface(s, d, cf)
        variants[f"deface {deface.__version__}: --scale 640x360"] = lambda s, d: run_deface(s, d, cf, (640, 360))

    for fn in variants.values():  # warm-up: sessions, encoder, page cache
        fn(warm, tmp / "w_out.mp4")
    times = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for r in range(args.repeats):  # round-robin, so background load hits every variant alike
        for i, (name, fn) in enumerate(variants.items()):
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            fn(clip, tmp / f"out_{i}.mp4")
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(cpu_seconds() - c0)
    results = []
    for i, name in enumerate(variants):
        leaked, with_face = count_leaks(clip, tmp / f"out_{i}.mp4", judge)
        fps = [args.frames / t for t in times[name]]
        cpu_ms = statistics.median(cpu[name]) / args.frames * 1000
        results.append(dict(name=name, fps_median=statistics.median(fps), fps_all=fps, cpu_ms_per_frame=cpu_ms,
                            leaked=leaked, with_face=with_face))
        print(f"{name}: {statistics.median(fps):.2f} fps {['%.2f' % f for f in fps]} cpu {cpu_ms:.0f} ms/frame "
              f"leaked {leaked}/{with_face}", file=sys.stderr)

    keys_line = ""
    if encoder is not None:  # key extraction alone: align + encode each track's best crop
        tracks = run_ours(clip, tmp / "keys_src.mp4", ours, ObfuscationConfig(), EncoderConfig())
        kt = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            keys_for_tracks(tracks, encoder)
            kt.append(time.perf_counter() - t0)
        k = statistics.median(kt)
        keys_line = (f"Key extraction (align + encode, small random-init pSp, CPU, batch {len(tracks)}): {len(tracks)} "
                     f"tracks in {k:.2f} s median ({', '.join('%.2f' % t for t in kt)}) = {k / len(tracks):.2f} s per "
                     f"track, i.e. {k / args.frames * 1000:.0f} ms per frame of this clip  ")
        print(keys_line, file=sys.stderr)

    import onnxruntime

    print(f"\nDate: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, PyAV {av.__version__}  ")
    print(f"Command: `.venv/bin/python benchmarks/bench_indexer.py --frames {args.frames} --repeats {args.repeats}`  ")
    print(f"Load average at the end: {os.getloadavg()[0]:.1f} (shared machine; runs are interleaved round-robin)  ")
    print(f"Clip: 1280x720, {args.frames} frames, 3 moving astronaut heads (faces ~25-160 px)  ")
    if keys_line:
        print(keys_line)
    print()
    print("| pipeline | fps (median) | runs | CPU ms / frame (median) | leaked frames / frames with a face |")
    print("|---|---:|---|---:|---:|")
    for r in results:
        print(f"| {r['name']} | {r['fps_median']:.2f} | {', '.join('%.2f' % f for f in r['fps_all'])} | "
              f"{r['cpu_ms_per_frame']:.0f} | {r['leaked']}/{r['with_face']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

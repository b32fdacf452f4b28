"""Obfuscation strength on real clips, before (HEAD's mosaic defaults) and after (today's), and indexer fps vs deface.

For each clip of tests/indexer/privacy_clips.py (built from packaged real media: a downscaled messi5, a crowd
from insightface's t1.jpg, opencv-doc's vtest.avi and Megamind.avi, Obama / Biden / Grace Hopper side by side;
--held-out adds the clips that were not used to choose the defaults), every obfuscation setting:

1. `obfuscate_video` (the indexer: detect, track, obfuscate, H.264) on the clip, timed: frames/s;
2. `verify_video` on its output, regions recomputed with the indexer's detector and tracker (every obfuscated
   box, short tracks' included; the returned tracks hold only the keys' boxes): CenterFace hits in obfuscated regions at
   0.2 / 0.3 / 0.4 / 0.5, dlib HOG and MMOD CNN hits there, leaked frames (inside / outside regions), and the
   re-identification test (dlib 128-D, nearest person; correct / probes vs chance 1/people, binomial p);

and deface (if installed: its defaults, threshold 0.2, blur) on the same clip, timed the same way. With
--judge-deface its output is judged too (regions: the after-setting's margin).

    .venv/bin/python benchmarks/bench_privacy.py [--clips messi,crowd] [--held-out] [--frames 60] [--no-deface]

Prints a Markdown table (one row per clip and setting). Timings are wall seconds of one run each on a
shared machine: compare the ratio within one run (the load is printed next to them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests" / "indexer")]

import privacy_clips  # noqa: E402  (tests/indexer: builds the clips from tests/realmedia.py's packages)

from facekeys.indexer.detect import make_detector  # noqa: E402
from facekeys.indexer.obfuscate import ObfuscationConfig  # noqa: E402
from facekeys.indexer.pipeline import obfuscate_video  # noqa: E402
from facekeys.indexer.privacy import REPORT_THRESHOLDS, VerifyConfig, verify_video  # noqa: E402

# HEAD's defaults before obfuscation strength was measured (git show 910ca67:indexer/facekeys/indexer/obfuscate.py)
BEFORE = ObfuscationConfig(margin=0.2, mosaic_blocks=6, mosaic_min_block=8)
AFTER = ObfuscationConfig()


def run_deface(src: Path, dst: Path, centerface) -> None:
    from deface.deface import video_detect

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # tqdm bar
        video_detect(str(src), str(dst), centerface, threshold=0.2, enable_preview=False, cam=False, nested=False,
                     replacewith="blur", mask_scale=1.3, ellipse=True, draw_scores=False,
                     ffmpeg_config={"codec": "libx264"}, keep_audio=False)


def judge(src: Path, dst: Path, margin: float, identity) -> dict:
    r = verify_video(src, dst, VerifyConfig(margin=margin), identity=identity)
    inside = len({lk.frame for lk in r.leaks if lk.in_region})
    outside = len({lk.frame for lk in r.leaks if not lk.in_region})
    cf = {t: r.centerface_hits_at(t)[0] for t in REPORT_THRESHOLDS}
    reid = r.reid
    if reid is None or reid.probes == 0:
        re_id = "-"
    elif reid.people < 2:
        re_id = f"one person ({reid.probes} faces)"
    else:
        re_id = (f"{reid.correct}/{reid.probes} = {reid.rate:.0%} vs {reid.chance:.0%} (1/{reid.people}), "
                 f"p={reid.p_value:.2g}; originals {reid.original_correct}/{reid.original_probes}")
    return {"frames": r.frames, "boxes": r.region_boxes, "cf": cf, "max": r.max_region_score,
            "hog": r.region_hit_count("hog"), "cnn": r.region_hit_count("cnn"),
            "leaked": f"{len(r.leaked_frames)} ({inside} in / {outside} out)", "reid": re_id,
            "passed": r.passed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default=",".join(privacy_clips.CLIPS))
    ap.add_argument("--held-out", action="store_true", help=f"also {', '.join(privacy_clips.HELD_OUT)}")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--no-deface", action="store_true")
    ap.add_argument("--judge-deface", action="store_true", help="also judge deface's output (slow)")
    args = ap.parse_args()
    clips = [c for c in args.clips.split(",") if c] + (list(privacy_clips.HELD_OUT) if args.held_out else [])

    from facekeys.identity import load

    identity = load()
    detector = make_detector()
    cf = None
    if not args.no_deface:
        import deface
        from deface.centerface import CenterFace

        with contextlib.redirect_stdout(io.StringIO()):
            cf = CenterFace(backend="onnxrt")
        deface_version = deface.__version__
    print(f"# bench_privacy: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"before = {BEFORE}\nafter  = {AFTER}\n")
    thr = " | ".join(f"CF>={t}" for t in REPORT_THRESHOLDS)
    print(f"| clip | setting | boxes | {thr} | max CF | HOG | CNN | leaked frames | re-identification | pass | fps |")
    print("|" + "---|" * (10 + len(REPORT_THRESHOLDS)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in clips:
            src = privacy_clips.build(name, tmp, args.frames)
            for label, cfg in (("before (HEAD)", BEFORE), ("after", AFTER)):
                dst = tmp / f"{name}-{label[:5]}.mp4"
                t0 = time.perf_counter()
                obfuscate_video(src, dst, detector, obfuscation_cfg=cfg)
                dt = time.perf_counter() - t0
                j = judge(src, dst, cfg.margin, identity)
                _row(name, label, j, j["frames"] / dt)
            if cf is not None:
                dst = tmp / f"{name}-deface.mp4"
                t0 = time.perf_counter()
                run_deface(src, dst, cf)
                dt = time.perf_counter() - t0
                if args.judge_deface:
                    j = judge(src, dst, AFTER.margin, identity)
                    _row(name, f"deface {deface_version} (blur, 0.2)", j, j["frames"] / dt)
                else:
                    n = args.frames
                    print(f"| {name} | deface {deface_version} (blur, 0.2) | | {' | '.join('' for _ in REPORT_THRESHOLDS)} "
                          f"| | | | | | | {n / dt:.1f} |")
            sys.stdout.flush()
    print(f"\nload after: {os.getloadavg()[0]:.1f}")


def _row(name: str, label: str, j: dict, fps: float) -> None:
    cf = " | ".join(str(j["cf"][t]) for t in REPORT_THRESHOLDS)
    print(f"| {name} | {label} | {j['boxes']} | {cf} | {j['max']:.2f} | {j['hog']} | {j['cnn']} | {j['leaked']} "
          f"| {j['reid']} | {'yes' if j['passed'] else 'NO'} | {fps:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""Timestamps and audio through the indexer's video path, per clip kind: frames whose pts changed, audio
packets lost or altered, A/V offset change; for this tree's facekeys.indexer.video or another copy of it.

    .venv/bin/python benchmarks/bench_timing.py                              # this tree (after)
    git show HEAD:indexer/facekeys/indexer/video.py > /tmp/video_head.py
    .venv/bin/python benchmarks/bench_timing.py --video /tmp/video_head.py   # the committed one (before)

Clips, copy (VideoReader -> VideoWriter, audio through the reader's sink) and measurements are those of
tests/indexer/test_indexer_timing.py (CLIPS, copy_through, timing_report), so the figures are the ones its
tests assert on. Reference pts: PyAV's decode in presentation order; for AVI, ffmpeg's (-vf showinfo).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "indexer")]  # realmedia, test_indexer_timing

import test_indexer_timing as timing  # noqa: E402

from facekeys.indexer import video  # noqa: E402


def load_video_module(path: Path):
    """Import a video.py from a path (registered in sys.modules first: its dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location("video_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, help="a video.py to measure instead of facekeys.indexer.video")
    ap.add_argument("--clips", nargs="*", default=list(timing.CLIPS), choices=list(timing.CLIPS))
    args = ap.parse_args()
    vmod = load_video_module(args.video) if args.video else video
    print(f"video module: {args.video or video.__file__}\n")
    print("| clip | frames in / out | pts mismatches | max pts error (ms) | audio packets in / out | audio lost "
          "| of which AC-3 fragments | audio altered | A/V offset change (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.clips:
            src = timing.make_clip(name, Path(tmp) / name)
            dst = Path(tmp) / f"{name}.out.mp4"
            timing.copy_through(src, dst, vmod)
            r = timing.timing_report(src, dst)
            off = r["av_offset_out"] - r["av_offset_in"] if r["av_offset_in"] is not None and r["av_offset_out"] is not None else None
            print(f"| {name} | {r['frames_in']} / {r['frames_out']} | {r['pts_mismatches']} | {r['max_pts_error_ms']:.3f} "
                  f"| {r['audio_in']} / {r['audio_out']} | {r['audio_lost']} | {r['audio_lost_undecodable']} "
                  f"| {r['audio_altered']} | {'n/a' if off is None else f'{float(off) * 1000:+.3f}'} |")


if __name__ == "__main__":
    main()

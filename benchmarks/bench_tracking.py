"""Track purity, ID swaps, shot cuts and tracker cost: the committed tracker (a git revision, default HEAD) next
to the one in the work tree.

Clips with known identities (tests/indexer/purity_clips.py): hard cuts between real people at the same place
(+ a head swap with no cut), a cross-fade between two people, two real heads crossing (two rows, one row),
meeting and turning back (two rows, one row), three small faces crossing in vtest.avi, and opencv-doc's
Megamind.avi. CenterFace (default settings) runs once per clip; both trackers get the same detections and
frames. Per clip and tracker: keys (tracks), pure keys (every judged key box shows one person and lies in one
shot), box purity (judged key boxes showing their key's majority person), ID swaps (times a key goes from one
person to another), keys across a true cut, the tracker's own time per frame (median of --repeats, after a
warm-up run) and frames/s. Then the cut detector: per clip true cuts, found, hits / misses / false cuts, the
change scores at Megamind's cuts against its other frames, false cuts on all of vtest.avi (795 frames); the
Megamind ground truth against dlib's 128-D descriptor; the indexer's end-to-end frames/s on Megamind.avi.

    .venv/bin/python benchmarks/bench_tracking.py [--baseline REV] [--repeats 3] [--no-dlib] [--no-pipeline]

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "indexer")]

import numpy as np  # noqa: E402

import purity_clips as pc  # noqa: E402
from facekeys.indexer.detect import make_detector  # noqa: E402
from facekeys.indexer.shots import CutDetector, ShotConfig, find_cuts  # noqa: E402
from facekeys.indexer.shots import thumbnail as shots_thumb  # noqa: E402
from facekeys.indexer.track import Tracker, TrackerConfig  # noqa: E402

BASELINE = "HEAD"  # the committed tracker (for issue 27's, d8faecd6: the same file)


def load_baseline(rev: str):
    """track.py at `rev` as module facekeys.indexer.track_baseline (its relative imports resolve)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:indexer/facekeys/indexer/track.py"],
                         check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "track_baseline.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("facekeys.indexer.track_baseline", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


def run(make_tracker, clip, dets):
    """Feed every frame as the pipeline does (update, pop under the look-ahead); (tracks, seconds)."""
    tr = make_tracker()
    tracks, t0 = [], time.perf_counter()
    for i, (im, d) in enumerate(zip(clip.frames, dets)):
        tracks += tr.update(i, i / 25, im, d)
        if i - tr.lookahead >= 0:
            tr.pop_boxes(i - tr.lookahead)
    tracks += tr.finish()
    return tracks, time.perf_counter() - t0


def cut_counts(true, found, tol: int = 1) -> tuple[int, int, int]:
    """(hits, misses, false cuts): a found cut within `tol` frames of a true one is a hit."""
    hits = sum(any(abs(t - f) <= tol for f in found) for t in true)
    false = sum(not any(abs(t - f) <= tol for t in true) for f in found)
    return hits, len(true) - hits, false


def coherence(frames, lag: int = 12) -> tuple[float, float]:
    """Over every `lag`-frame window: (max net change, max coherence = net / summed per-frame change among
    windows whose net change reaches the cut threshold): what the gradual-transition test sees."""
    th, steps = [], []
    for im in frames:
        th.append(shots_thumb(im))
        steps.append(float(np.abs(th[-1] - th[-2]).mean()) if len(th) > 1 else 0.0)
    nets = [(float(np.abs(th[t] - th[t - lag]).mean()), sum(steps[t - lag + 1 : t + 1])) for t in range(lag, len(th))]
    thr = ShotConfig().threshold
    return max(n for n, _ in nets), max([n / p for n, p in nets if n >= thr and p > 0] or [0.0])


def cut_scores(frames) -> list[tuple[float, float]]:
    """Per frame (change, change / recent median) as the cut detector saw it."""
    det, out = CutDetector(), []
    for im in frames:
        det.update(im)
        out.append(det.score)
    return out


def dlib_agreement(clip, dets) -> tuple[int, int, list]:
    """Megamind ground truth (shot + side) against dlib: each detection's 128-D descriptor is given the label
    of the nearest per-person mean descriptor. Returns (agreeing, detections, disagreements)."""
    import importlib.util as iu

    import dlib

    models = iu.find_spec("face_recognition_models").submodule_search_locations[0] + "/models/"
    sp = dlib.shape_predictor(models + "shape_predictor_5_face_landmarks.dat")
    rec = dlib.face_recognition_model_v1(models + "dlib_face_recognition_resnet_model_v1.dat")
    rows = []
    for i, ds in enumerate(dets):
        for d in ds:
            r = dlib.rectangle(int(d.x), int(d.y), int(d.x + d.w), int(d.y + d.h))
            v = np.array(rec.compute_face_descriptor(clip.frames[i], sp(clip.frames[i], r)))  # (128,)
            rows.append((i, (d.x, d.y, d.w, d.h), clip.shown(i, (d.x, d.y, d.w, d.h)), v))
    names = sorted({r[2] for r in rows if r[2]})
    mean = {n: np.mean([r[3] for r in rows if r[2] == n], axis=0) for n in names}
    bad = [(i, tuple(round(v) for v in box), lab) for i, box, lab, v in rows
           if min(names, key=lambda n: np.linalg.norm(v - mean[n])) != lab]
    return len(rows) - len(bad), len(rows), bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the 'before' tracker")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-dlib", action="store_true", help="skip the dlib check of Megamind's ground truth")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the end-to-end frames/s")
    args = ap.parse_args()

    old = load_baseline(args.baseline)
    trackers = {f"before ({args.baseline})": lambda: old.Tracker(old.TrackerConfig()),
                "after": lambda: Tracker(TrackerConfig()),
                "after, cut detection off": lambda: Tracker(TrackerConfig(cuts=None)),
                "after, appearance off": lambda: Tracker(TrackerConfig(appearance=None))}
    det = make_detector()
    clips = [pc.cuts_same_place(), pc.dissolve(), pc.crossing(), pc.crossing(same_row=True), pc.crossing(40, turn=True),
             pc.crossing(40, same_row=True, turn=True), pc.small_faces_vtest(), pc.megamind()]
    names = ["cuts_same_place", "dissolve", "crossing", "crossing_same_row", "meet_and_turn", "meet_and_turn_same_row",
             "small_faces_vtest", "megamind"]

    print("| clip | frames | faces/frame | tracker | keys | pure keys | box purity | ID swaps | keys across a cut "
          "| tracker ms/frame | tracker frames/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    detections, cut_rows = {}, []
    for name, clip in zip(names, clips):
        dets = [det.detect(im) for im in clip.frames]
        detections[name] = dets
        cut_rows.append((name, list(clip.cuts), find_cuts(clip.frames)))
        per = sum(map(len, dets)) / len(dets)
        for tname, make in trackers.items():
            run(make, clip, dets)  # warm-up
            times = []
            for _ in range(args.repeats):
                tracks, dt = run(make, clip, dets)
                times.append(dt)
            pure, _ = pc.purity(tracks, clip)
            across = sum(len({clip.shot(b[0]) for b in t.boxes}) > 1 for t in tracks)
            sec = statistics.median(times) / len(clip.frames)
            print(f"| {name} | {len(clip.frames)} | {per:.1f} | {tname} | {len(tracks)} | {pure}/{len(tracks)} "
                  f"| {pc.box_purity(tracks, clip):.3f} | {pc.id_swaps(tracks, clip)} | {across} | {sec * 1e3:.2f} "
                  f"| {1 / sec:.0f} |")

    print("\n| clip | true cuts | cuts found (shots.py; the before tracker has none) | hits | misses | false cuts |")
    print("|---|---|---|---|---|---|")
    for name, true, found in cut_rows:
        h, m, f = cut_counts(true, found)
        print(f"| {name} | {true} | {found} | {h} | {m} | {f} |")
    from facekeys.indexer.video import VideoReader

    with VideoReader(pc.realmedia.opencv_doc_data() / "vtest.avi") as r:
        vt = [fr.image for fr in r.frames()]
    found = find_cuts(vt)
    print(f"| vtest.avi (all, 768x576) | [] ({len(vt)} frames, one shot) | {found} | 0 | 0 | {len(found)} |")
    with VideoReader(pc.realmedia.opencv_doc_data() / "tree.avi") as r:
        tree = [fr.image for fr in r.frames()]
    found = find_cuts(tree)
    print(f"| tree.avi (a hand sweeping past the lens) | [] ({len(tree)} frames, one shot) | {found} | 0 | 0 | {len(found)} |")
    from skimage.data import astronaut

    a = astronaut()  # (512, 512, 3): a pan speeding up to 16 px/frame, then 4 px/frame
    xs = np.cumsum([0, 0, 0, 1, 2, 4, 6, 8, 10, 12, 14, 16, 16, 16, 16, 16] + [4] * 12)
    pan = [np.ascontiguousarray(a[100:340, x : x + 320]) for x in xs if x + 320 <= 512]
    print("\n| gradual-transition test, 12-frame windows | max net change | max coherence where net >= 0.08 |\n|---|---|---|")
    for name, frames in [("dissolve (clip)", clips[1].frames), ("pan over astronaut", pan), ("tree.avi", tree),
                         ("crossing (clip)", clips[2].frames), ("small_faces_vtest (clip)", clips[6].frames),
                         ("vtest.avi", vt)]:
        net, coh = coherence(frames)
        print(f"| {name} | {net:.3f} | {coh:.2f} |")
    mm = clips[-1]
    sc = cut_scores(mm.frames)
    at = [sc[c] for c in mm.cuts[1:]]  # cut 1 comes out of frame 0 (black): no recent median yet
    rest = [sc[i] for i in range(2, len(sc)) if i not in mm.cuts]
    print(f"\nMegamind.avi change scores (mean |gray change| of a 64x36 thumbnail; x = over the median of the 8 "
          f"frames before): at its cuts {min(a for a, _ in at):.3f}..{max(a for a, _ in at):.3f} "
          f"({min(r for _, r in at):.1f}x..{max(r for _, r in at):.1f}x); at its {len(rest)} other frames max "
          f"{max(a for a, _ in rest):.3f} (max {max(r for _, r in rest):.1f}x); thresholds 0.08 and 4x")

    if not args.no_dlib:
        ok, n, bad = dlib_agreement(mm, detections["megamind"])
        print(f"\nMegamind ground truth vs dlib nearest-person: {ok}/{n} detections agree; disagreements {bad}")

    if not args.no_pipeline:
        from facekeys.indexer.pipeline import obfuscate_video

        src = pc.realmedia.opencv_doc_data() / "Megamind.avi"
        with tempfile.TemporaryDirectory() as tmp:
            cfgs = {"after (defaults)": TrackerConfig(), "after, no appearance / cuts": TrackerConfig(appearance=None, cuts=None)}
            obfuscate_video(src, Path(tmp) / "warm.mp4", det)  # warm-up
            n = len(mm.frames)
            print(f"\n| indexer on Megamind.avi (720x528, {n} frames) | frames/s |\n|---|---|")
            for name, cfg in cfgs.items():
                fps = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    obfuscate_video(src, Path(tmp) / "out.mp4", det, cfg)
                    fps.append(n / (time.perf_counter() - t0))
                print(f"| {name} | {statistics.median(fps):.1f} |")


if __name__ == "__main__":
    main()

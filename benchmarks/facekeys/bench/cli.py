"""`facekeys bench ...`: recall per layer subset (and recovery fidelity) through the real engine.

    facekeys bench recall (--synthetic [--identities N] [--impostor-count M] [--seed S]
                           | --gallery G.npy --gallery-labels L --probes P.npy --probe-labels L2 [--impostors I.npy]
                             [--encoder CKPT] [--gallery-landmarks GL.npy] [--probe-landmarks PL.npy]
                             [--impostor-landmarks IL.npy])
                          --out DIR [--metrics cosine,l2] [--target-far 1e-3] [--threshold-layers high:4]
                          [--subsets high:1,low:4,...] [--batch 256]
    facekeys bench fidelity --generator CKPT --images I.npy (--latents L.npy | --encoder CKPT)
                            [--latent-avg A.npy] --out DIR [--ks 1,2,4,9,18] [--families high,low] [--limit N]

`.npy` arrays of float latents (N, 18, 512) are used as keys; arrays of uint8 face images (N, H, W, 3) are
encoded with `facekeys.models.FaceEncoder(--encoder)` (aligned with 5-point landmarks when given, else they
must already be aligned 256x256 crops). Labels are `.npy` (N,) or `.txt` (one per line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from facekeys.errors import InvalidArgument
from facekeys.records import METRICS

from .recall import (
    RecallConfig, RecallData, encode_images, load_encoder, load_labels, load_latents, run_recall, subsets_from_specs,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would sys.exit(2); the top CLI prints our errors instead
        raise InvalidArgument(f"{self.prog}: {message}")


def _metrics(text: str) -> tuple[str, ...]:
    items = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    bad = [m for m in items if m not in METRICS]
    if bad or not items:
        raise InvalidArgument(f"--metrics {text!r}: use a comma list of {', '.join(METRICS)}")
    return items


def _parser() -> _Parser:
    p = _Parser(prog="facekeys bench", description="Benchmarks run directly on the engine (no server).")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("recall", help="top-1 accuracy and TAR@FAR per W+ layer subset (paper Tables 1-2, Fig. 6a)")
    src = r.add_argument_group("input (one of)")
    src.add_argument("--synthetic", action="store_true", help="generated latents, results labelled SYNTHETIC")
    src.add_argument("--gallery", type=Path, help="gallery .npy: latents (N,18,512) or uint8 images (N,H,W,3)")
    src.add_argument("--gallery-labels", type=Path, help="gallery identity labels .npy or .txt")
    src.add_argument("--probes", type=Path, help="probe .npy (latents or images)")
    src.add_argument("--probe-labels", type=Path, help="probe identity labels; labels not in the gallery = impostors")
    src.add_argument("--impostors", type=Path, help="impostor probe .npy (identities not in the gallery)")
    src.add_argument("--encoder", type=Path, help="pSp checkpoint, needed when the arrays are images")
    for what in ("gallery", "probe", "impostor"):
        src.add_argument(f"--{what}-landmarks", type=Path, help=f"5-point landmarks (N,5,2) of the {what} images")
    syn = r.add_argument_group("synthetic workload")
    syn.add_argument("--identities", type=int, default=2000, help="gallery identities (default 2000)")
    syn.add_argument("--impostor-count", type=int, default=2000, help="impostor probes (default 2000)")
    syn.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, required=True, help="output folder")
    r.add_argument("--metrics", default=",".join(METRICS), help="comma list of cosine,l2 (default both)")
    r.add_argument("--target-far", type=float, default=1e-3, help="FAR for the recommended threshold (1e-3)")
    r.add_argument("--threshold-layers", default="high:4", help="subset of the recommendation (server default_layers)")
    r.add_argument("--subsets", help="comma list like high:1,low:4 (default: the paper's 36 subsets)")
    r.add_argument("--batch", type=int, default=256, help="probes per KeyStore.match call")
    r.add_argument("--quiet", action="store_true", help="no per-subset progress lines")

    f = sub.add_parser("fidelity", help="regenerate faces from keys per layer subset: pixel L2, LPIPS, identity")
    f.add_argument("--generator", type=Path, required=True, help="pSp or StyleGAN2 checkpoint (generator weights)")
    f.add_argument("--images", type=Path, required=True, help="original aligned faces .npy uint8 (N,256,256,3)")
    f.add_argument("--latents", type=Path, help="their keys .npy (N,18,512); else --encoder encodes the images")
    f.add_argument("--encoder", type=Path, help="pSp checkpoint to encode --images")
    f.add_argument("--latent-avg", type=Path, help="(18,512) or (512,) .npy filling unkept layers; default: from "
                                                   "the pSp/StyleGAN2 checkpoint")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--ks", default="1,2,4,9,18", help="numbers of layers to keep (comma list)")
    f.add_argument("--families", default="high,low")
    f.add_argument("--limit", type=int, default=64, help="at most this many images (CPU generation is slow)")
    return p


def _need(args, *names: str) -> None:
    missing = [n for n in names if getattr(args, n.replace("-", "_")) is None]
    if missing:
        raise InvalidArgument("missing " + ", ".join(f"--{n}" for n in missing))


def _keys(path: Path, what: str, encoder, landmarks: Path | None):
    a = load_latents(path, what)
    if a.dtype.kind == "f":
        if landmarks is not None:
            raise InvalidArgument(f"--{what}-landmarks given but {path} holds latents, not images")
        return a
    if a.dtype.kind != "u":
        raise InvalidArgument(f"{what}: {path} has dtype {a.dtype}; expected float latents or uint8 images")
    if encoder is None:
        raise InvalidArgument(f"{what}: {path} holds images; give --encoder CKPT to encode them")
    lm = None if landmarks is None else load_latents(landmarks, f"{what} landmarks")
    return encode_images(a, encoder, lm, what)


def recall_data(args) -> RecallData:
    if args.synthetic:
        if args.gallery or args.probes or args.impostors:
            raise InvalidArgument("--synthetic excludes --gallery/--probes/--impostors")
        if args.identities < 1 or args.impostor_count < 0:
            raise InvalidArgument("--identities must be >= 1 and --impostor-count >= 0")
        from .synthetic import SyntheticConfig, make_workload

        d = make_workload(SyntheticConfig(identities=args.identities, impostors=args.impostor_count, seed=args.seed))
        genuine = d.probe_labels < args.identities
        return RecallData.build(d.gallery, d.gallery_labels, d.probes[genuine], d.probe_labels[genuine],
                                d.probes[~genuine] if (~genuine).any() else None,
                                workload="SYNTHETIC", encoder_id="synthetic")
    _need(args, "gallery", "gallery-labels", "probes", "probe-labels")
    encoder = None
    if args.encoder is not None:
        encoder = load_encoder(args.encoder)
    gallery = _keys(args.gallery, "gallery", encoder, args.gallery_landmarks)
    probes = _keys(args.probes, "probe", encoder, args.probe_landmarks)
    impostors = None if args.impostors is None else _keys(args.impostors, "impostor", encoder, args.impostor_landmarks)
    return RecallData.build(gallery, load_labels(args.gallery_labels, "gallery labels"), probes,
                            load_labels(args.probe_labels, "probe labels"), impostors,
                            encoder_id=encoder.encoder_id if encoder is not None else "bench")


def cmd_recall(args) -> int:
    from .report import recommendation_text, write_all

    extra = {} if args.subsets is None else {"subsets": subsets_from_specs(args.subsets.split(","))}
    config = RecallConfig(metrics=_metrics(args.metrics), target_far=args.target_far,
                          threshold_layers=args.threshold_layers, batch=args.batch, **extra)
    data = recall_data(args)
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_recall(data, config, progress)
    files = write_all(report, args.out)
    tag = "SYNTHETIC " if report.workload == "SYNTHETIC" else ""
    print(f"{tag}recall: {report.gallery} gallery keys, {report.genuine} genuine + {report.impostors} impostor "
          f"probes, {len(report.results)} subset/metric runs in {report.seconds:.1f} s")
    for m in config.metrics:
        best = max((r for r in report.results if r.metric == m), key=lambda r: r.accuracy)
        print(f"  best {m}: layers {best.subset.label} ({best.subset.spec}) top-1 {100 * best.accuracy:.2f} %")
    print(recommendation_text(report))
    for k, v in files.items():
        print(f"  {k}: {v}")
    return 0


def cmd_fidelity(args) -> int:
    from .fidelity import run_fidelity_cli

    return run_fidelity_cli(args)


def main(argv: Sequence[str]) -> int:
    """Entry of `facekeys bench ...`; errors raise `facekeys.errors.InvalidArgument` (one line)."""
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:  # --help
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        raise InvalidArgument("facekeys bench: give a command: recall or fidelity")
    if args.command == "recall":
        return cmd_recall(args)
    return cmd_fidelity(args)

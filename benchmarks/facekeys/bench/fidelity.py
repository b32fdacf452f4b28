"""Recovery fidelity per layer subset (paper Fig. 6(b)-(d)): regenerate a face from the kept W+ layers of its key.

For each subset S (high:k or low:k) the generator input is the key on the layers of S and `latent_avg`
elsewhere; the output is compared with the original aligned face:

- pixel L2: mean squared error per pixel and channel with images scaled to [-1, 1] (pSp's L2 loss);
- LPIPS (AlexNet): only when the `lpips` package AND its backbone weights load here (they are fetched on
  first use, so offline they usually do not); otherwise the column is skipped and the reason recorded;
- identity distance: Euclidean distance of dlib's 128-d face descriptors (`face_recognition`; dlib's
  same-person rule is < 0.6), the whole aligned crop taken as the face box; skipped likewise when
  `face_recognition` / `face_recognition_models` / `dlib` are not installed.

Nothing is measured without generator weights: the CLI needs --generator, and a metric that cannot be
computed is reported as skipped with its reason, never filled in.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from facekeys.dims import KEY_SHAPE
from facekeys.errors import FailedPrecondition, InvalidArgument
from facekeys.layers import parse_layers

from .recall import Subset, load_latents

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (N,H,W,3) uint8 x2 -> (N,) float64


def pixel_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image mean squared error of uint8 images (N, H, W, 3) mapped to [-1, 1]. Range [0, 4]."""
    if a.shape != b.shape or a.ndim != 4:
        raise InvalidArgument(f"pixel_l2: shapes {a.shape} and {b.shape} differ or are not (N, H, W, 3)")
    x = a.astype(np.float64) / 127.5 - 1.0
    y = b.astype(np.float64) / 127.5 - 1.0
    return ((x - y) ** 2).mean(axis=(1, 2, 3))


def lpips_scorer(net: str = "alex") -> Scorer:
    """LPIPS distance, or FailedPrecondition saying why it is unavailable here."""
    if importlib.util.find_spec("lpips") is None:
        raise FailedPrecondition("LPIPS skipped: the `lpips` package is not installed (it needs torchvision)")
    try:
        import lpips
        import torch

        model = lpips.LPIPS(net=net, verbose=False).eval()
    except (ImportError, OSError, RuntimeError) as e:  # OSError covers a failed weight download offline
        raise FailedPrecondition(f"LPIPS skipped: model or weights unavailable: {e}") from None

    def score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        def t(x):  # (N,H,W,3) uint8 -> (N,3,H,W) in [-1, 1]
            return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0

        with torch.no_grad():
            return model(t(a), t(b)).reshape(-1).double().numpy()

    return score


def identity_scorer() -> Scorer:
    """Euclidean distance of dlib 128-d descriptors, or FailedPrecondition saying why it is unavailable."""
    missing = [m for m in ("dlib", "face_recognition_models", "face_recognition") if importlib.util.find_spec(m) is None]
    if missing:  # face_recognition calls quit() when its models are missing: check before importing
        raise FailedPrecondition(f"identity similarity skipped: not installed: {', '.join(missing)}")
    import face_recognition

    def descriptor(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        enc = face_recognition.face_encodings(np.ascontiguousarray(img), known_face_locations=[(0, w, h, 0)])
        return np.asarray(enc[0], np.float64)  # (128,)

    def score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.array([np.linalg.norm(descriptor(x) - descriptor(y)) for x, y in zip(a, b)])

    return score


def mix_latents(latents: np.ndarray, latent_avg: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    """Keys (N, 18, 512) kept on `layers` (0-based), `latent_avg` (18, 512) elsewhere."""
    out = np.broadcast_to(latent_avg, latents.shape).astype(np.float32)  # (N, 18, 512)
    idx = list(layers)
    out[:, idx] = latents[:, idx]
    return out


@dataclass(frozen=True)
class FidelityRow:
    subset: Subset
    images: int
    means: Mapping[str, float]  # metric name -> mean over images (only metrics that were computed)


@dataclass(frozen=True)
class FidelityReport:
    rows: tuple[FidelityRow, ...]
    metrics: tuple[str, ...]  # computed metric names, in column order
    skipped: Mapping[str, str]  # metric name -> why it was not computed


def run_fidelity(images: np.ndarray, latents: np.ndarray, latent_avg: np.ndarray,
                 generate: Callable[[np.ndarray], np.ndarray], subsets: Sequence[Subset],
                 scorers: Mapping[str, Scorer], skipped: Mapping[str, str] | None = None) -> FidelityReport:
    """images (N, S, S, 3) uint8 originals; latents (N, 18, 512) their keys; generate(w) -> (N, S, S, 3) uint8."""
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] != 3:
        raise InvalidArgument(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if latents.shape != (len(images),) + KEY_SHAPE:
        raise InvalidArgument(f"latents shape {latents.shape} is not ({len(images)}, 18, 512)")
    avg = np.asarray(latent_avg, np.float32)
    if avg.shape == KEY_SHAPE[1:]:
        avg = np.broadcast_to(avg, KEY_SHAPE)
    if avg.shape != KEY_SHAPE:
        raise InvalidArgument(f"latent_avg shape {avg.shape} is not (18, 512) or (512,)")
    rows = []
    for s in subsets:
        out = generate(mix_latents(latents, avg, s.layers))  # (N, S, S, 3) uint8
        if out.shape != images.shape:
            raise InvalidArgument(f"generator output {out.shape} does not match the images {images.shape}")
        rows.append(FidelityRow(s, len(images), {name: float(np.mean(f(images, out))) for name, f in scorers.items()}))
    return FidelityReport(tuple(rows), tuple(scorers), dict(skipped or {}))


def available_scorers() -> tuple[dict[str, Scorer], dict[str, str]]:
    scorers: dict[str, Scorer] = {"pixel_l2": pixel_l2}
    skipped: dict[str, str] = {}
    for name, make in (("lpips", lpips_scorer), ("identity_distance", identity_scorer)):
        try:
            scorers[name] = make()
        except FailedPrecondition as e:
            skipped[name] = str(e)
    return scorers, skipped


def fidelity_csv(report: FidelityReport) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["family", "k", "layers", "images", *report.metrics])
    for r in report.rows:
        w.writerow([r.subset.family, r.subset.k, r.subset.label, r.images, *(f"{r.means[m]:.6f}" for m in report.metrics)])
    return buf.getvalue()


def fidelity_markdown(report: FidelityReport) -> str:
    lines = ["# Recovery fidelity per layer subset", "",
             "| Family | Layers | Images | " + " | ".join(report.metrics) + " |",
             "|---|---|---:|" + "---:|" * len(report.metrics)]
    for r in report.rows:
        lines.append(f"| {r.subset.family} | {r.subset.label} | {r.images} | "
                     + " | ".join(f"{r.means[m]:.4f}" for m in report.metrics) + " |")
    if report.skipped:
        lines += ["", "Skipped (not measured, not estimated):", ""]
        lines += [f"- {name}: {why}" for name, why in report.skipped.items()]
    return "\n".join(lines) + "\n"


def plot_fidelity(report: FidelityReport, path: Path) -> Path:
    """Fig. 6(b)-(d): each computed metric vs number of kept layers, from high and from low."""
    from .report import _pyplot

    plt = _pyplot()
    n = len(report.metrics)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    for ax, m in zip(axes[0], report.metrics):
        for family, style in (("high", "-o"), ("low", "--s")):
            rows = sorted((r for r in report.rows if r.subset.family == family), key=lambda r: r.subset.k)
            if rows:
                ax.plot([r.subset.k for r in rows], [r.means[m] for r in rows], style, ms=4, label=f"from {family}")
        ax.set_xlabel("number of kept W+ layers")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _checkpoint_latent_avg(path: Path) -> np.ndarray:
    from facekeys.models import CheckpointError, load_psp, load_stylegan2

    try:
        return load_psp(path, encoder=False, decoder=False).latent_avg.cpu().numpy()  # (18, 512)
    except CheckpointError:
        avg = load_stylegan2(path).latent_avg
    if avg is None:
        raise InvalidArgument(f"{path} has no latent_avg; give --latent-avg A.npy")
    return avg.cpu().numpy()  # (512,)


def run_fidelity_cli(args) -> int:
    """`facekeys bench fidelity`: needs generator weights; lazily imports facekeys.models (torch)."""
    for p in (args.generator, args.images):
        if not Path(p).is_file():
            raise InvalidArgument(f"{p} does not exist")
    if args.limit < 1:
        raise InvalidArgument("--limit must be >= 1")
    try:
        from facekeys.models import FaceGenerator
    except ImportError as e:
        raise InvalidArgument(f"fidelity needs facekeys.models.FaceGenerator, which cannot be imported: {e}") from None
    images = load_latents(args.images, "images")[: args.limit]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InvalidArgument(f"--images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if args.latents is not None:
        latents = load_latents(args.latents, "latents")[: args.limit]
    elif args.encoder is not None:
        from .recall import load_encoder

        latents = load_encoder(args.encoder).encode(images)
    else:
        raise InvalidArgument("give --latents L.npy or --encoder CKPT")
    avg = (load_latents(args.latent_avg, "latent avg") if args.latent_avg is not None
           else _checkpoint_latent_avg(args.generator))
    try:
        ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    except ValueError:
        raise InvalidArgument(f"--ks {args.ks!r} is not a comma list of integers") from None
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    subsets = [Subset(f, k) for f in families for k in ks]
    for s in subsets:
        parse_layers(s.spec)  # validates family and k
    gen = FaceGenerator(args.generator)
    size = images.shape[1]
    scorers, skipped = available_scorers()
    report = run_fidelity(images, latents, avg, lambda w: gen.generate(w, output_size=size), subsets, scorers,
                          skipped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.csv").write_text(fidelity_csv(report), encoding="utf-8")
    (out / "fidelity.md").write_text(fidelity_markdown(report), encoding="utf-8")
    plot_fidelity(report, out / "fidelity.png")
    print(fidelity_markdown(report))
    for name in ("fidelity.csv", "fidelity.md", "fidelity.png"):
        print(f"  {out / name}")
    return 0

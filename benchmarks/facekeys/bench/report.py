"""Outputs of a recall run: CSV, Markdown tables in the paper's layout, PNG plots (matplotlib, lazily)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from facekeys.dims import N_LAYERS
from facekeys.errors import FailedPrecondition, InvalidArgument

from .recall import RecallReport, Subset, roc_curve

METRIC_NAME = {"cosine": "Cosine (max)", "l2": "L2 (min)"}
ROC_SUBSETS = ("high:1", "high:2", "high:4", "high:9", "high:18", "low:9")  # drawn in roc.png (all are in the CSV)


def _far_tag(far: float) -> str:
    return f"{far:g}"


def csv_text(report: RecallReport) -> str:
    """One row per (metric, subset): accuracy and, per FAR, TAR / threshold / achieved FAR / resolved."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["workload", "family", "k", "layers", "metric", "genuine", "correct", "top1_accuracy", "impostors"]
    for f in report.config.fars:
        t = _far_tag(f)
        head += [f"tar@far={t}", f"threshold@far={t}", f"achieved_far@far={t}", f"resolved@far={t}"]
    w.writerow(head)
    for r in report.results:
        row = [report.workload, r.subset.family, r.subset.k, r.subset.label, r.metric, r.genuine, r.correct,
               f"{r.accuracy:.6f}", len(r.impostor_scores)]
        for p in r.points:
            row += ["" if math.isnan(p.tar) else f"{p.tar:.6f}", "" if math.isnan(p.threshold) else repr(p.threshold),
                    "" if math.isnan(p.achieved_far) else f"{p.achieved_far:.6f}", str(p.resolved).lower()]
        w.writerow(row)
    return buf.getvalue()


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def accuracy_table(report: RecallReport, family: str) -> str:
    """Paper Table 1 (family 'high') / Table 2 ('low'): layers | cosine | L2 top-1 accuracy (%)."""
    metrics = report.config.metrics
    lines = ["| Layers | " + " | ".join(f"{METRIC_NAME[m]} top-1 %" for m in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for k in range(1, N_LAYERS + 1):
        s = Subset(family, k)
        if not any(r.subset == s for r in report.results):
            continue
        cells = [_pct(report.result(s, m).accuracy) for m in metrics]
        lines.append(f"| {s.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def open_set_table(report: RecallReport, family: str) -> str:
    """TAR (%) at each FAR for every subset of a family, metrics side by side."""
    metrics, fars = report.config.metrics, report.config.fars
    head = [f"{METRIC_NAME[m]} TAR@FAR={_far_tag(f)}" for m in metrics for f in fars]
    lines = ["| Layers | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for k in range(1, N_LAYERS + 1):
        s = Subset(family, k)
        if not any(r.subset == s for r in report.results):
            continue
        cells = []
        for m in metrics:
            for p in report.result(s, m).points:
                cells.append(_pct(p.tar) + ("" if p.resolved else "*"))
        lines.append(f"| {s.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recommendation_text(report: RecallReport) -> str:
    if not report.recommendations:
        return "No impostor probes: no open-set numbers and no threshold recommendation."
    far = report.config.target_far
    lines = [f"Recommended server thresholds for FAR <= {far:g} on layers `{report.config.threshold_layers}` "
             f"(the server's default subset), from {report.impostors} impostor probes"
             + (" [SYNTHETIC workload: calibrate on real keys before use]" if report.workload == "SYNTHETIC" else "")
             + ":", ""]
    for rec in report.recommendations:
        p = rec.point
        note = "" if p.resolved else f" (NOT resolved: {report.impostors} impostors < 1/FAR; zero-false-accept threshold)"
        lines.append(f"- `StoreConfig.{rec.config_field} = {p.threshold!r}`: TAR {_pct(p.tar)} %, "
                     f"FAR {_pct(p.achieved_far)} %; engine re-check with this threshold: TAR {_pct(rec.engine_tar)} %, "
                     f"FAR {_pct(rec.engine_far)} %{note}")
    return "\n".join(lines)


def markdown(report: RecallReport, files: dict[str, str]) -> str:
    tag = " (SYNTHETIC)" if report.workload == "SYNTHETIC" else ""
    parts = [f"# Recall per layer subset{tag}", ""]
    if report.workload == "SYNTHETIC":
        parts += ["**SYNTHETIC workload**: generated latents (`facekeys.bench.synthetic`). These numbers measure "
                  "the engine end to end, not the paper's claim about which W+ layers carry identity.", ""]
    parts += [f"Gallery: {report.gallery} keys of {report.identities} identities; genuine probes: {report.genuine}; "
              f"impostor probes: {report.impostors}. All searches go through `KeyStore.match` (top-1, exact "
              f"per-layer flat indexes). Run time {report.seconds:.1f} s.", ""]
    if files:
        parts += ["Files: " + ", ".join(f"`{v}`" for v in files.values()), ""]
    parts += ["## Table 1: top-1 accuracy, layers from high (coarse)" + tag, "", accuracy_table(report, "high"), "",
              "## Table 2: top-1 accuracy, layers from low (fine)" + tag, "", accuracy_table(report, "low"), ""]
    if report.impostors:
        parts += ["## Open set: TAR (%) at FAR" + tag, "",
                  "TAR = genuine probes accepted with the correct identity; FAR = impostor probes accepted. "
                  "`*` = FAR not resolved (fewer than 1/FAR impostors).", "",
                  "### From high", "", open_set_table(report, "high"), "",
                  "### From low", "", open_set_table(report, "low"), ""]
    parts += ["## Threshold" + tag, "", recommendation_text(report), ""]
    return "\n".join(parts)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise FailedPrecondition(f"plots need matplotlib (pip install matplotlib): {e}") from None
    return plt


def plot_accuracy(report: RecallReport, path: Path) -> Path:
    """Paper Fig. 6(a): top-1 accuracy vs number of layers, four curves (high/low x cosine/L2)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, style in (("high", "-"), ("low", "--")):
        for metric, marker in (("cosine", "o"), ("l2", "s")):
            rows = sorted((r for r in report.results if r.subset.family == family and r.metric == metric),
                          key=lambda r: r.subset.k)
            if rows:
                ax.plot([r.subset.k for r in rows], [100 * r.accuracy for r in rows], style, marker=marker,
                        ms=4, label=f"from {family}, {METRIC_NAME[metric]}")
    ax.set_xlabel("number of W+ layers")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_xticks(range(1, N_LAYERS + 1))
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    title = f"Top-1 recall vs layers, {report.identities} identities"
    ax.set_title(title + (" — SYNTHETIC workload" if report.workload == "SYNTHETIC" else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_roc(report: RecallReport, path: Path, subsets=ROC_SUBSETS) -> Path:
    """Open-set ROC (TAR vs FAR, log x) per metric for a few representative subsets."""
    plt = _pyplot()
    metrics = report.config.metrics
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    floor = 1.0 / max(report.impostors, 1)
    for ax, metric in zip(axes[0], metrics):
        for spec in subsets:
            try:
                r = report.result(spec, metric)
            except InvalidArgument:
                continue
            far, tar = roc_curve(metric, r.genuine_scores, r.genuine_correct, r.impostor_scores)
            ax.step(np.maximum(far, floor / 2), 100 * tar, where="post", label=f"layers {r.subset.label}")
        for f in report.config.fars:
            ax.axvline(f, color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_xlim(floor / 2, 1)
        ax.set_ylim(0, 101)
        ax.set_xlabel("false-accept rate (impostors)")
        ax.set_ylabel("true-accept rate, correct identity (%)")
        ax.set_title(METRIC_NAME[metric] + (" — SYNTHETIC" if report.workload == "SYNTHETIC" else ""), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(report: RecallReport, out: Path, prefix: str = "recall") -> dict[str, str]:
    """Write `<prefix>.csv`, `<prefix>.md`, `<prefix>_layers.png` and (with impostors) `<prefix>_roc.png`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / f"{prefix}.csv", "md": out / f"{prefix}.md", "plot": out / f"{prefix}_layers.png"}
    files["csv"].write_text(csv_text(report), encoding="utf-8")
    plot_accuracy(report, files["plot"])
    if report.impostors:
        files["roc"] = plot_roc(report, out / f"{prefix}_roc.png")
    names = {k: str(v) for k, v in files.items()}
    files["md"].write_text(markdown(report, {k: Path(v).name for k, v in names.items() if k != "md"}),
                           encoding="utf-8")
    return names

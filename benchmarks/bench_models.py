"""Forward time, fraction of the CPU compute bound and peak memory of the full-size pSp encoder and StyleGAN2
generator, reference and fast paths side by side in one run.

RANDOM WEIGHTS (no checkpoint is read): the timings are those of the real architectures, but the outputs
mean nothing. Each case runs in a fresh subprocess so that its peak RSS is its own.

Fraction of the compute bound = FLOPs per forward (torch.utils.flop_counter.FlopCounterMode on the reference
modules, counted on the meta device) / (forward seconds x float32 sgemm FLOP/s). The sgemm rate is measured
in the same process right before every timed forward (best of 3 square 2048 matmuls, same thread count), so
contention from other work on a shared box partly cancels. The fast generator path is also compared with the
reference image of the same keys (PSNR, peak-to-peak 2).

    python benchmarks/bench_models.py                      # CPU, 2 threads: every case below
    python benchmarks/bench_models.py --device cuda        # when a GPU exists
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import time


def _flops(kind: str, batch: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from facekeys.models.psp import GradualStyleEncoder
    from facekeys.models.stylegan2 import Generator

    with torch.device("meta"):
        model = GradualStyleEncoder() if kind == "encoder" else Generator()
        x = torch.empty(batch, 3, 256, 256) if kind == "encoder" else torch.empty(batch, 18, 512)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def _sgemm(torch, dev) -> float:
    n = 2048
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    c = torch.empty(n, n, device=dev)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(3):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _case(kind: str, impl: str, batch: int, device: str, warmup: int, repeats: int, threads: int | None, queue) -> None:
    import torch

    from facekeys.models.fast import FastEncoder, FastSynthesis
    from facekeys.models.psp import GradualStyleEncoder
    from facekeys.models.stylegan2 import Generator

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    t0 = time.perf_counter()
    if kind == "encoder":
        model = GradualStyleEncoder().eval().requires_grad_(False).to(dev)
        x = torch.rand(batch, 3, 256, 256, device=dev) * 2 - 1  # (B, 3, 256, 256)
        run = model if impl == "reference" else FastEncoder(model)
    else:
        model = Generator().eval().requires_grad_(False).to(dev)
        x = torch.randn(batch, 18, 512, device=dev)  # (B, 18, 512)
        run = model if impl == "reference" else FastSynthesis(model)
    build_s = time.perf_counter() - t0
    flops = _flops(kind, batch)

    def once() -> tuple[float, torch.Tensor]:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            y = run(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        assert torch.isfinite(y).all()
        return time.perf_counter() - t, y

    first = [once()[0] for _ in range(warmup)]
    times, rates, y = [], [], None
    for _ in range(repeats):
        rates.append(_sgemm(torch, dev))
        t, y = once()
        times.append(t)
    fractions = [flops / (t * r) for t, r in zip(times, rates)]
    out = {
        "case": kind,
        "impl": impl,
        "batch": batch,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "gflop_per_face": round(flops / batch / 1e9, 1),
        "build_s": round(build_s, 2),
        "warmup_s": [round(t, 3) for t in first],
        "times_s": [round(t, 3) for t in times],
        "sgemm_gflops": [round(r / 1e9) for r in rates],
        "per_face_s": round(statistics.median(times) / batch, 3),
        "fraction": round(statistics.median(fractions), 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # KiB on Linux
    }
    if kind == "generator" and impl != "reference":
        with torch.no_grad():
            ref = model(x[:1])  # (1, 3, 1024, 1024)
        mse = torch.mean((ref - y[:1]) ** 2).item()
        out["psnr_db_vs_reference"] = round(10 * __import__("math").log10(4.0 / max(mse, 1e-30)), 1)
    if dev.type == "cuda":
        out["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["gpu"] = torch.cuda.get_device_name()
    queue.put(out)


def _cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's choice)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-large", type=int, default=2, help="repeats for batch >= 8")
    ap.add_argument("--encoder-batches", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--generator-batches", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--impls", nargs="*", default=["reference", "fast"], choices=["reference", "fast"])
    ap.add_argument(
        "--reference-generator-max-batch", type=int, default=1,
        help="largest batch for the reference generator (its batch 8 needs ~20 GB on CPU; spec models.md §8)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON line per case instead of a table")
    args = ap.parse_args(argv)

    import torch

    ctx = mp.get_context("spawn")
    cases = []
    for kind, batches in (("encoder", args.encoder_batches), ("generator", args.generator_batches)):
        for batch in batches:
            for impl in args.impls:
                if kind == "generator" and impl == "reference" and batch > args.reference_generator_max_batch:
                    continue
                cases.append((kind, impl, batch))
    print("# facekeys model benchmark: RANDOM WEIGHTS (architecture timing only, outputs meaningless)")
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  cpu: {_cpu_model()}"
          f"  cores: {mp.cpu_count()}  device: {args.device}  load: {_load()}")
    rows = []
    for kind, impl, batch in cases:
        repeats = args.repeats_large if batch >= 8 else args.repeats
        q = ctx.Queue()
        p = ctx.Process(target=_case, args=(kind, impl, batch, args.device, args.warmup, repeats, args.threads, q))
        p.start()
        p.join()
        if p.exitcode != 0:
            print(f"# {kind} {impl} batch {batch}: subprocess failed with exit code {p.exitcode}")
            continue
        r = q.get()
        r["load_after"] = _load()
        rows.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"# done: {kind} {impl} batch {batch}: {r['per_face_s']} s/face, fraction {r['fraction']}, "
                  f"load {r['load_after']}", flush=True)
    if not args.json:
        print("| network | path | batch | device | threads | GFLOP/face | warm-up (s) | repeats (s) | sgemm GFLOP/s "
              "| s/face | fraction of bound | peak RSS (GB) | PSNR vs ref (dB) | load after |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} | {r['impl']} | {r['batch']} | {r.get('gpu', r['device'])} | {r['threads']} "
                  f"| {r['gflop_per_face']} | {r['warmup_s']} | {r['times_s']} | {r['sgemm_gflops']} | {r['per_face_s']} "
                  f"| {r['fraction']} | {r['peak_rss_gb']} | {r.get('psnr_db_vs_reference', '-')} | {r['load_after']} |")


if __name__ == "__main__":
    main()

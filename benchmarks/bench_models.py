"""Forward-pass timing and peak memory of the full-size pSp encoder and StyleGAN2 generator.

RANDOM WEIGHTS (no checkpoint is read): the timings are those of the real architectures, but the outputs
mean nothing. Each case runs in a fresh subprocess so that its peak RSS is its own.

    python benchmarks/bench_models.py                      # CPU: encoder batch 1 and 8, generator batch 1
    python benchmarks/bench_models.py --device cuda        # when a GPU exists
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import platform
import resource
import statistics
import subprocess
import time


def _case(kind: str, batch: int, device: str, warmup: int, repeats: int, threads: int | None, queue) -> None:
    import torch

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
    else:
        model = Generator().eval().requires_grad_(False).to(dev)
        x = torch.randn(batch, 18, 512, device=dev)  # (B, 18, 512)
    build_s = time.perf_counter() - t0

    def once() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            y = model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        assert torch.isfinite(y).all()
        return time.perf_counter() - t

    first = [once() for _ in range(warmup)]
    times = [once() for _ in range(repeats)]
    out = {
        "case": kind,
        "batch": batch,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "build_s": round(build_s, 2),
        "warmup_s": [round(t, 4) for t in first],
        "times_s": [round(t, 4) for t in times],
        "median_s": round(statistics.median(times), 4),
        "per_image_s": round(statistics.median(times) / batch, 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # KiB on Linux
    }
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--repeats-large", type=int, default=1, help="repeats for encoder batch 8")
    ap.add_argument("--encoder-batches", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--generator-batches", type=int, nargs="*", default=[1])
    ap.add_argument("--json", action="store_true", help="print one JSON line per case instead of a table")
    args = ap.parse_args(argv)

    import torch

    ctx = mp.get_context("spawn")
    cases = [("encoder", b) for b in args.encoder_batches] + [("generator", b) for b in args.generator_batches]
    print(f"# facekeys model benchmark: RANDOM WEIGHTS (architecture timing only, outputs meaningless)")
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  cpu: {_cpu_model()}"
          f"  cores: {mp.cpu_count()}  device: {args.device}")
    rows = []
    for kind, batch in cases:
        repeats = args.repeats_large if (kind == "encoder" and batch >= 8) else args.repeats
        q = ctx.Queue()
        p = ctx.Process(target=_case, args=(kind, batch, args.device, args.warmup, repeats, args.threads, q))
        p.start()
        p.join()
        if p.exitcode != 0:
            print(f"# {kind} batch {batch}: subprocess failed with exit code {p.exitcode}")
            continue
        r = q.get()
        rows.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
    if not args.json:
        print("| network | batch | device | threads | warm-up (s) | repeats (s) | median (s) | per image (s) "
              "| peak RSS (GB) | peak CUDA (GB) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} | {r['batch']} | {r.get('gpu', r['device'])} | {r['threads']} | {r['warmup_s']} "
                  f"| {r['times_s']} | {r['median_s']} | {r['per_image_s']} | {r['peak_rss_gb']} "
                  f"| {r.get('peak_cuda_gb', '-')} |")


if __name__ == "__main__":
    main()

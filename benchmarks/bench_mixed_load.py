"""Enrolment under Match load, over gRPC on loopback: does a camera gateway's enrolment keep up while
investigators search?

A `facekeys serve` subprocess is filled with --keys random keys, then two phases run against it:
  1. match only: --matchers concurrent clients, each sending one-probe Matches back to back;
  2. mixed: the same matchers plus --streams EnrollStream clients, together offering --rate batches/s of
     --batch keys (each stream sends on a fixed schedule, so a slow server shows as growing ack latency).
Per phase it prints Match p50/p99, and for the mixed phase the achieved enrol rate and the acknowledgement
latency (send -> ack) p50/p99 overall and per --window seconds, so a backlog that grows is visible.

    python benchmarks/bench_mixed_load.py                       # the issue's load: 20k keys, 16 + 2, 20 batches/s
    python benchmarks/bench_mixed_load.py --seconds 60 --out benchmarks/results/mixed_load.md
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from facekeys.bench.serve import start_serve
from facekeys.client import Client
from facekeys.dims import KEY_SHAPE
from facekeys.records import NewKey

ENCODER = "bench:mixed"


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    return start_serve(data_dir, map_size="8G", timeout=120)


def keys(rng: np.random.Generator, n: int, first: int) -> list[NewKey]:
    lat = rng.standard_normal((n, *KEY_SHAPE), dtype=np.float32)  # (n, 18, 512)
    return [NewKey(v, ENCODER, f"person-{first + i}") for i, v in enumerate(lat)]


def fill(address: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with Client(address, timeout=600) as c:
        for i in range(0, n, 500):
            c.enroll(keys(rng, min(500, n - i), i))


def matcher(address: str, stop: threading.Event, out: list[float], seed: int, layers: str) -> None:
    rng = np.random.default_rng(seed)
    with Client(address, timeout=120) as c:
        while not stop.is_set():
            probe = rng.standard_normal((1, *KEY_SHAPE), dtype=np.float32)
            t0 = time.perf_counter()
            c.match(probe, ENCODER, layers, "cosine", top_k=10)
            out.append(time.perf_counter() - t0)


def enroller(address: str, stop: threading.Event, acks: list[tuple[float, float]], period: float, batch: int,
             seed: int, first: int) -> None:
    """Send a batch every `period` s on a fixed schedule; record (send time, ack latency) per batch."""
    rng = np.random.default_rng(seed)
    batches = [keys(rng, batch, first + i * batch) for i in range(8)]  # reused contents, new identities not needed
    with Client(address, timeout=600) as c:
        stream = c.open_stream()
        sent: list[float] = []  # send times, in order; ack j answers batch j

        def read():
            for j, _ in enumerate(stream.acks()):
                acks.append((sent[j], time.perf_counter() - sent[j]))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        t_next = time.perf_counter()
        i = 0
        while not stop.is_set():
            now = time.perf_counter()
            if now < t_next:
                time.sleep(min(t_next - now, 0.05))
                continue
            sent.append(time.perf_counter())
            stream.send(batches[i % len(batches)])
            i += 1
            t_next += period
        stream.close()
        reader.join(timeout=120)


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if len(xs) else float("nan")


def phase(address: str, args, enrol: bool) -> dict:
    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(args.matchers)]
    acks: list[list[tuple[float, float]]] = [[] for _ in range(args.streams)]
    threads = [threading.Thread(target=matcher, args=(address, stop, lat[i], 100 + i, args.layers))
               for i in range(args.matchers)]
    if enrol:
        period = args.streams / args.rate
        threads += [threading.Thread(target=enroller, args=(address, stop, acks[i], period, args.batch, 200 + i,
                                                           10_000_000 * (i + 1))) for i in range(args.streams)]
    for t in threads:
        t.start()
    time.sleep(args.warmup)
    for xs in lat:
        xs.clear()
    t_start = time.perf_counter()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=300)
    t_end = time.perf_counter()
    matches = [x for xs in lat for x in xs]
    out = {"match_n": len(matches), "match_p50": pct(matches, 50), "match_p99": pct(matches, 99),
           "match_per_s": len(matches) / (t_end - t_start)}
    if enrol:
        a = sorted((s, d) for xs in acks for s, d in xs if s >= t_start)
        out["acks"] = a
        out["ack_p50"] = pct([d for _, d in a], 50)
        out["ack_p99"] = pct([d for _, d in a], 99)
        out["enrol_per_s"] = len([1 for s, d in a if s + d <= t_end]) / (t_end - t_start)
        out["t_start"] = t_start
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--matchers", type=int, default=16)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--rate", type=float, default=20.0, help="enrol batches per second offered, all streams")
    ap.add_argument("--batch", type=int, default=16, help="keys per enrol batch")
    ap.add_argument("--layers", default="high:4")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="fk-mixed-") as tmp:
        proc, address = start_server(Path(tmp) / "data")
        try:
            t0 = time.perf_counter()
            fill(address, args.keys, seed=1)
            fill_s = time.perf_counter() - t0
            only = phase(address, args, enrol=False)
            mixed = phase(address, args, enrol=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    lines = [
        f"# Mixed load: {args.keys:,} keys, {args.matchers} Match clients ({args.layers}, cosine, top 10), "
        f"{args.streams} enrol streams offering {args.rate:g} batches/s of {args.batch} keys; {args.seconds:g} s per phase",
        "", f"filled in {fill_s:.1f} s", "",
        "| phase | Matches/s | Match p50 ms | Match p99 ms | enrol batches/s acked | ack p50 ms | ack p99 ms |",
        "|---|---|---|---|---|---|---|",
        f"| match only | {only['match_per_s']:.1f} | {only['match_p50']:.1f} | {only['match_p99']:.1f} | - | - | - |",
        f"| mixed | {mixed['match_per_s']:.1f} | {mixed['match_p50']:.1f} | {mixed['match_p99']:.1f} | "
        f"{mixed['enrol_per_s']:.1f} of {args.rate:g} | {mixed['ack_p50']:.1f} | {mixed['ack_p99']:.1f} |",
        "", f"Ack latency per {args.window:g} s window of the mixed phase (by send time):", "",
        "| window s | batches | ack p50 ms | ack p99 ms |", "|---|---|---|---|",
    ]
    for w0 in np.arange(0, args.seconds, args.window):
        d = [d for s, d in mixed["acks"] if w0 <= s - mixed["t_start"] < w0 + args.window]
        lines.append(f"| {w0:.0f}-{w0 + args.window:.0f} | {len(d)} | {pct(d, 50):.1f} | {pct(d, 99):.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()

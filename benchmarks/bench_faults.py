"""Fault benchmark: kill -9 an audited key store under Match load; does it restart, and does its log verify?

    python benchmarks/bench_faults.py --kill-trials 15 [--clients 3] [--workdir /tmp/facekeys-faults]

Starts `facekeys serve` on 127.0.0.1 with the audit log on (log in <workdir>/audit/, the anchor in the key
store's LMDB in <workdir>/data/lmdb), enrols a few keys, then per trial: `--clients` threads send Match calls,
the server gets SIGKILL after a random delay, the log is classified read-only against head and anchor
(`facekeys audit verify --data-dir`'s check: ok, or the crash state the kill left: recovered-from-crash /
torn-tail), the server is started again (a restart that does not print its banner within 60 s counts as
failed) and the log verified again (must be ok, the repair recorded as an AuditRecovery record). At the end:
every answered Match must have its record (records >= answered). Prints one row per trial and a summary.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from facekeys.bench.serve import start_serve
from facekeys.client import Client
from facekeys.errors import FacekeysError
from facekeys.records import NewKey
from facekeys.security import audit as A


def start(data: Path, log: Path, keyfile: Path, timeout: float = 60.0):
    """(process, address, seconds to the banner), or (None, None, seconds) if it did not start."""
    t0 = time.perf_counter()
    try:
        proc, address = start_serve(data, "--audit-log", log, "--audit-key-file", keyfile, timeout=timeout)
    except RuntimeError:
        return None, None, time.perf_counter() - t0
    return proc, address, time.perf_counter() - t0


def load(address: str, probe: np.ndarray, stop: threading.Event, answered: list) -> None:
    try:
        with Client(address, timeout=5) as c:
            while not stop.is_set():
                c.match(probe, "enc", top_k=1)
                answered.append(time.perf_counter())
    except FacekeysError:
        pass  # the server was killed under the call


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-trials", type=int, required=True, help="kill -9 / restart cycles")
    ap.add_argument("--clients", type=int, default=3, help="threads sending Match calls")
    ap.add_argument("--min-delay", type=float, default=0.3, help="seconds of load before the kill, at least")
    ap.add_argument("--max-delay", type=float, default=1.5, help="... at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/facekeys-faults")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    data, log, keyfile = work / "data", work / "audit" / "audit.log", work / "audit.key"
    work.mkdir(parents=True)
    keyfile.write_bytes(os.urandom(32).hex().encode())
    key = keyfile.read_bytes().strip()
    anchor = A.StoreAnchorReader(data / "lmdb")
    rng = random.Random(args.seed)
    latents = np.random.default_rng(args.seed).standard_normal((4, 18, 512)).astype(np.float32)

    proc, address, _ = start(data, log, keyfile)
    if proc is None:
        print("the first start failed", file=sys.stderr)
        return 1
    with Client(address, timeout=10) as c:
        c.enroll([NewKey(v, "enc", f"p{i}") for i, v in enumerate(latents)])

    rows, answered_total, load_seconds = [], 0, 0.0
    print(f"{'trial':>5} {'answered':>8} {'Match/s':>8} {'after kill':>21} {'restart':>7} {'start s':>7} "
          f"{'after restart':>13}")
    for trial in range(1, args.kill_trials + 1):
        stop, answered = threading.Event(), []
        threads = [threading.Thread(target=load, args=(address, latents[0], stop, answered), daemon=True)
                   for _ in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(rng.uniform(args.min_delay, args.max_delay))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        seconds = time.perf_counter() - t0
        stop.set()
        for t in threads:
            t.join(timeout=30)
        answered_total += len(answered)
        load_seconds += seconds
        before = A.verify_locked(log, key, anchor).state
        proc, address, start_s = start(data, log, keyfile)
        restarted = proc is not None
        after = A.verify_locked(log, key, anchor).state if restarted else "-"
        rows.append((len(answered), before, restarted, after))
        print(f"{trial:>5} {len(answered):>8} {len(answered) / seconds:>8.0f} {before:>21} "
              f"{'ok' if restarted else 'FAILED':>7} {start_s:>7.2f} {after:>13}", flush=True)
        if not restarted:
            break
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    final = A.verify_locked(log, key, anchor)
    recs = list(A.read(log)) if final.intact else []
    matches = sum(1 for r in recs if r["action"] == "Match")
    recoveries = Counter(r["decision"] for r in recs if r["action"] == "AuditRecovery")
    n = len(rows)
    print()
    print(f"trials                          {n}")
    print(f"restarts OK                     {sum(r[2] for r in rows)}/{n}")
    print(f"log after kill (before restart) " + ", ".join(f"{s}: {c}" for s, c in Counter(r[1] for r in rows).items()))
    print(f"log after restart               " + ", ".join(f"{s}: {c}" for s, c in Counter(r[3] for r in rows).items()))
    print(f"recoveries recorded in the log  " + (", ".join(f"{s}: {c}" for s, c in recoveries.items()) or "none"))
    print(f"final verify (with anchor)      {final.state}, {final.records} records, anchor at {final.anchor}")
    print(f"answered Matches / Match records {answered_total} / {matches} "
          f"({'every answered Match recorded' if matches >= answered_total else 'MISSING RECORDS'})")
    print(f"audited Match rate under load   {answered_total / load_seconds:.0f}/s ({args.clients} clients)")
    ok = (all(r[2] and r[3] == "ok" for r in rows) and final.ok and matches >= answered_total
          and all(r[1] in ("ok",) + A.CRASH_STATES for r in rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

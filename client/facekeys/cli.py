"""`facekeys` command line. Subcommands that need the server extra (serve, demo) or other extras
(index, recover-serve, bench) import them lazily, so the client-only install stays light.

Every failure prints one line `facekeys: error: ...` to stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from facekeys.errors import FacekeysError, InvalidArgument

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_RECOVERY = "127.0.0.1:50052"
_SUFFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'64G', '512M', '1048576' -> bytes."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if t and t[-1] in _SUFFIX:
            return int(float(t[:-1]) * _SUFFIX[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64G, 512M)") from None


# -- server-side commands ---------------------------------------------------------------------------
def _server_config(args):
    from facekeys.server import ServerConfig
    from facekeys.store import StoreConfig

    thresholds = {k: v for k, v in (("cosine_threshold", args.cosine_threshold),
                                    ("l2_threshold", args.l2_threshold)) if v is not None}
    groups = {"ann_groups": tuple(args.ann_groups.split())} if args.ann_groups is not None else {}
    store = StoreConfig(map_size=args.map_size, index_mode=args.index_mode, vector_dtype=args.vector_dtype,
                        ann_backend=args.ann_backend, ann_candidates=args.ann_candidates, ann_refine=args.ann_refine,
                        **groups, **thresholds)
    security = security_config(args)

    def path(v):
        return Path(v) if v else None

    return ServerConfig(
        data_dir=Path(args.data_dir), host=args.host, port=args.port, metrics_port=args.metrics_port,
        health_port=args.health_port, workers=args.workers, default_layers=args.default_layers,
        encoder_checkpoint=path(args.encoder_checkpoint), store=store, security=security,
    )


def _load_encoder(config):
    if config.encoder_checkpoint is None:
        return None
    from facekeys.server.images import ServerImageEncoder

    return ServerImageEncoder.load(config.encoder_checkpoint)


def cmd_serve(args) -> int:
    from facekeys.server import serve
    from facekeys.server.logs import setup_logging

    setup_logging(args.log_level)
    config = _server_config(args)
    serve(config, encoder=_load_encoder(config))
    return 0


def cmd_demo(args) -> int:
    """Serve the embedded default and run a short scripted enrol + match against it."""
    from facekeys.bench.synthetic import SyntheticConfig, make_workload
    from facekeys.client import Client
    from facekeys.records import NewKey, Where
    from facekeys.server import KeyStoreServer
    from facekeys.server.logs import setup_logging

    setup_logging("WARNING")
    server = KeyStoreServer(_server_config(args)).start()
    metrics = f"metrics on http://{args.host}:{server.metrics_port}/metrics" if server.metrics_port else "no metrics"
    print(f"key store serving on {server.address} (data in {args.data_dir}; {metrics})")
    try:
        data = make_workload(SyntheticConfig(identities=200, impostors=3, seed=7))  # the calibrated workload
        with Client(server.address) as client:
            keys = [NewKey(latent, "synthetic-demo", identity_id=f"person-{label:04d}",
                           where=Where("cam-01", "demo-video", f"track-{i}", 1.7e9 + i, 1.7e9 + i + 4,
                                       np.array([[0, 10, 10, 64, 64]])))
                    for i, (latent, label) in enumerate(zip(data.gallery, data.gallery_labels))]
            for acks in client.enroll_stream([keys[i:i + 50] for i in range(0, len(keys), 50)]):
                pass
            print(f"enrolled {len(keys)} synthetic keys (SYNTHETIC latents, no face model involved); "
                  f"store now holds {client.stats().keys}")
            picks = [0, 1, 2, len(data.probes) - 1]
            for p in picks:
                r = client.match(data.probes[p], "synthetic-demo", layers="high:4", metric="cosine", top_k=3)
                best = r.results[0].hits[0]
                truth = (f"person-{data.probe_labels[p]:04d}" if data.probe_labels[p] < 200 else "an impostor")
                print(f"probe of {truth:>12}: {'ACCEPTED' if r.results[0].accepted else 'refused '} "
                      f"best {best.identity_id} cosine={best.score:.3f} (threshold {r.threshold:.3f}, layers 1-4)")
        if args.exit:
            return 0
        from facekeys.server.service import wait_for_signal

        print("serving; Ctrl-C to stop")
        wait_for_signal()
        return 0
    finally:
        server.stop()


# -- client commands --------------------------------------------------------------------------------
def _client(args, cls=None):
    from facekeys.client import Client

    cls = cls or Client

    def read(path):
        try:
            return Path(path).read_bytes() if path else None
        except OSError as e:
            raise InvalidArgument(f"cannot read {path}: {e.strerror}") from None

    token = read(args.token_file)
    return cls(args.server, timeout=args.timeout, token=token.decode().strip() if token else None,
                  tls_ca=read(args.tls_ca), client_cert=read(args.tls_cert), client_key=read(args.tls_key))


def _load_latents(path: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InvalidArgument(f"cannot read {path}: {e}") from None
    return a


def cmd_enroll(args) -> int:
    from facekeys.records import NewKey, Obfuscation, Where

    latents = _load_latents(args.latents)
    if latents.ndim == 2:
        latents = latents[None]
    boxes = _load_boxes(args.boxes) if args.boxes else np.zeros((0, 5), np.int32)
    where = Where(args.camera, args.video, args.track, args.t_start, args.t_end, boxes)
    keys = [NewKey(lat, args.encoder_id, args.identity, where, Obfuscation(args.obfuscation, args.strength))
            for lat in latents]
    with _client(args) as client:
        for k in client.enroll(keys):
            print(json.dumps({"key_id": k.key_id, "identity_id": k.identity_id}))
    return 0


def _load_boxes(path: str) -> np.ndarray:
    try:
        return np.loadtxt(path, delimiter=",", ndmin=2) if path.endswith((".csv", ".txt")) else np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise InvalidArgument(f"cannot read boxes from {path}: {e}") from None


def cmd_match(args) -> int:
    from facekeys.records import Filter

    probes = _load_latents(args.probe)
    flt = Filter(tuple(args.camera or ()), tuple(args.identity or ()), args.t_from, args.t_to)
    with _client(args) as client:
        r, grants = client.match_with_grants(probes, args.encoder_id, args.layers, args.metric, args.top_k,
                                             args.threshold, flt, ann_candidates=args.ann_candidates,
                                             exact=args.exact)
    if args.grant_out:
        granted = [g for g in grants if g]
        if not granted:
            raise InvalidArgument("no probe was accepted (or the server issues no grants): nothing to write")
        Path(args.grant_out).write_bytes(granted[0])
    for i, p in enumerate(r.results):
        print(json.dumps({
            "probe": i, "decision": "accepted" if p.accepted else "refused", "metric": r.metric,
            "threshold": r.threshold, "searched": r.searched,
            "hits": [{"key_id": h.key_id, "identity_id": h.identity_id, "score": h.score, "camera_id": h.camera_id,
                      "video_id": h.video_id, "track_id": h.track_id} for h in p.hits],
        }))
    return 0


def _grant(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read grant file {path}: {e.strerror}") from None


def cmd_recover(args) -> int:
    from facekeys.client import RecoveryClient

    with _client(args, RecoveryClient) as client:
        faces = client.recover(_grant(args.grant_file), args.key, args.size)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in faces:
        path = out / f"key-{f.key_id}.png"
        path.write_bytes(f.png)
        print(json.dumps({"key_id": f.key_id, "identity_id": f.identity_id, "png": str(path)}))
    return 0


def cmd_reveal(args) -> int:
    from facekeys.client import RecoveryClient

    videos = [tuple(v.split("=", 1)) if "=" in v else (v, "") for v in args.video]
    with _client(args, RecoveryClient) as client:
        for v in client.reveal(_grant(args.grant_file), args.key, videos):
            print(json.dumps({"video_path": v.video_path, "output_path": v.output_path, "key_ids": list(v.key_ids),
                              "frames": v.frames, "frames_changed": v.frames_changed,
                              "boxes_revealed": v.boxes_revealed, "boxes_skipped": v.boxes_skipped}))
    return 0


def cmd_get(args) -> int:
    with _client(args) as client:
        rec = client.get(args.key_id, include_latent=bool(args.latent_out))
    if args.latent_out:
        np.save(args.latent_out, rec.latent)
    w = rec.where
    print(json.dumps({
        "key_id": rec.key_id, "identity_id": rec.identity_id, "encoder_id": rec.encoder_id,
        "camera_id": w.camera_id, "video_id": w.video_id, "track_id": w.track_id, "t_start": w.t_start,
        "t_end": w.t_end, "boxes": np.asarray(w.boxes).tolist(), "obfuscation": rec.obfuscation.method,
        "attributes": dict(rec.attributes), "created_at": rec.created_at,
    }))
    return 0


def cmd_delete(args) -> int:
    with _client(args) as client:
        ids = client.delete_identity(args.identity) if args.identity else client.delete_key(args.key)
    print(json.dumps({"deleted_key_ids": ids}))
    return 0


def cmd_stats(args) -> int:
    from facekeys.layers import format_layers

    with _client(args) as client:
        s = client.stats()
    print(json.dumps({"keys": s.keys, "identities": s.identities, "keys_by_encoder": dict(s.keys_by_encoder),
                      "index_bytes": s.index_bytes, "lmdb_used_bytes": s.lmdb_used_bytes,
                      "lmdb_map_bytes": s.lmdb_map_bytes, "index_mode": s.index_mode,
                      "ann_max_candidates": s.ann_max_candidates, "ann_layers": format_layers(s.ann_layers),
                      "ann_candidates_by_encoder": dict(s.ann_candidates_by_encoder),
                      "ann_backend": s.ann_backend, "gpu_index_bytes": s.gpu_index_bytes}))
    return 0


def cmd_identities(args) -> int:
    with _client(args) as client:
        page, next_after = client.list_identities(args.after, args.limit)
    for identity, count in page:
        print(json.dumps({"identity_id": identity, "keys": count}))
    if next_after:
        print(json.dumps({"next_after": next_after}))
    return 0


# -- parser -------------------------------------------------------------------------------------------
def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default="facekeys-data", help="data directory (LMDB lives in DATA_DIR/lmdb)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0 = any free port)")
    p.add_argument("--metrics-port", type=int, default=9100, help="Prometheus port (-1 = off, 0 = any)")
    p.add_argument("--health-port", type=int, default=-1,
                   help="plaintext port serving only grpc.health.v1, for probes without TLS (-1 = off)")
    p.add_argument("--workers", type=int, default=16, help="gRPC handler threads")
    p.add_argument("--map-size", type=parse_size, default=parse_size("64G"), help="LMDB map size (e.g. 64G)")
    p.add_argument("--default-layers", default="high:4", help="layer subset when a Match names none")
    p.add_argument("--index-mode", choices=("exact", "ann"), default="exact",
                   help="exact: scan every key; ann: candidates + exact re-rank from float16 files (README, Index "
                        "modes; not with --master-key-file)")
    p.add_argument("--vector-dtype", choices=("float32", "float16"), default="float32",
                   help="exact mode's vectors: float32 in RAM or float16 memory-mapped files")
    p.add_argument("--ann-backend", choices=("auto", "pq", "flat"), default="auto",
                   help="ann candidates: auto = a FAISS GPU flat index when the FAISS GPU build sees a GPU, else "
                        "CPU PQ fast-scan (pq)")
    p.add_argument("--ann-groups", metavar="SPECS",
                   help='ann (pq): layer-group indexes, space-separated "layers" or "layers/m" (default: '
                        "StoreConfig.ann_groups); a group of exactly a subset's layers serves it, so \"high:4/128 "
                        'high:6/64 ..." buys impostor recall for twice the bytes scanned (README, Index modes)')
    p.add_argument("--ann-candidates", type=int, default=0, metavar="N",
                   help="ann: default candidates per shard (0 = sized from the number of keys); Match may ask for "
                        "others")
    p.add_argument("--ann-refine", type=int, default=0, metavar="N",
                   help="ann (pq): candidates the refine step keeps for the exact re-rank (0 = sized from the number "
                        "of keys)")
    p.add_argument("--cosine-threshold", type=float,
                   help="default accept threshold (cosine >=; default: StoreConfig's, calibrated on the synthetic "
                        "workload); calibrate on your data with `facekeys bench recall`")
    p.add_argument("--l2-threshold", type=float, help="default accept threshold (L2 <=; default: StoreConfig's)")
    p.add_argument("--encoder-checkpoint", help="psp_ffhq_encode.pt: enables image Enroll/Match")
    security_flags(p.add_argument_group("security (see README, Security)"), signs_grants=True)


def security_flags(g, *, signs_grants: bool) -> None:
    """TLS, credentials, audit and key-transform flags shared by `serve` and `recover-serve`."""
    g.add_argument("--tls-cert", help="PEM server certificate")
    g.add_argument("--tls-key", help="PEM private key")
    g.add_argument("--tls-client-ca", help="require client certificates from this CA (mutual TLS)")
    g.add_argument("--credentials-file", help="client tokens and roles (facekeys creds issue); enables auth")
    g.add_argument("--audit-log", help="tamper-evident audit log file")
    g.add_argument("--audit-key-file", help="HMAC key of the audit log")
    g.add_argument("--transform-secret-file", help="per-deployment key transform secret")
    g.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback listener without TLS and credentials (closed test networks only)")
    if signs_grants:
        g.add_argument("--grant-key-file", help="Ed25519 key signing reveal grants (facekeys secrets init)")
        g.add_argument("--grant-ttl", type=float, default=300.0, help="seconds a reveal grant is valid")
        g.add_argument("--master-key-file", help="32-byte master key: encrypt keys at rest")


def security_config(args):
    """The SecurityConfig for flags added by `security_flags`."""
    from facekeys.security.config import SecurityConfig

    def path(v):
        return Path(v) if v else None

    extra = {}
    if hasattr(args, "grant_key_file"):
        extra = dict(grant_key_file=path(args.grant_key_file), grant_ttl=args.grant_ttl,
                     master_key_file=path(args.master_key_file))
    return SecurityConfig(
        tls_cert=path(args.tls_cert), tls_key=path(args.tls_key), tls_client_ca=path(args.tls_client_ca),
        credentials_file=path(args.credentials_file), audit_log=path(args.audit_log),
        audit_key_file=path(args.audit_key_file), transform_secret_file=path(args.transform_secret_file),
        insecure=args.insecure, **extra)


def _client_flags(p: argparse.ArgumentParser, default: str = DEFAULT_SERVER) -> None:
    p.add_argument("--server", default=default, help=f"service address (default {default})")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    p.add_argument("--token-file", help="file holding this client's bearer token")
    p.add_argument("--tls-ca", help="CA certificate (PEM) of the server: use TLS")
    p.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--tls-key", help="client private key (PEM) for mutual TLS")


_DELEGATED = {  # subcommands implemented by other packages: facekeys <name> ... -> module.main(argv)
    "index": ("facekeys.indexer.cli", "indexer"),
    "verify-video": ("facekeys.indexer.verify_cli", "indexer"),
    "recover-serve": ("facekeys.recovery.cli", "models"),
    "bench": ("facekeys.bench.cli", "bench"),
    "creds": ("facekeys.security.cli", "server"),
    "audit": ("facekeys.security.cli", "server"),
    "secrets": ("facekeys.security.cli", "server"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facekeys", description="Privacy-preserving face key store")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the key store service (LMDB + FAISS in a data directory)")
    _server_flags(p)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="serve the embedded default and run a scripted enrol + match")
    _server_flags(p)
    p.add_argument("--exit", action="store_true", help="stop after the scripted part instead of serving on")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("enroll", help="enrol latents from a .npy file ((18,512) or (N,18,512))")
    _client_flags(p)
    p.add_argument("latents")
    p.add_argument("--encoder-id", required=True)
    p.add_argument("--identity", default="", help="identity id (default: a new identity per key)")
    p.add_argument("--camera", default="")
    p.add_argument("--video", default="")
    p.add_argument("--track", default="")
    p.add_argument("--t-start", type=float, default=0.0)
    p.add_argument("--t-end", type=float, default=0.0)
    p.add_argument("--boxes", help=".npy or .csv of (M,5) rows: frame_index,x,y,w,h")
    p.add_argument("--obfuscation", default="mosaic")
    p.add_argument("--strength", type=float, default=0.0)
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("match", help="match probe latents from a .npy file")
    _client_flags(p)
    p.add_argument("probe")
    p.add_argument("--encoder-id", required=True)
    p.add_argument("--layers", default="high:4", help="paper layers: 1-4, 1,2,5, high:k, low:k, all")
    p.add_argument("--metric", choices=("cosine", "l2"), default="cosine")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threshold", type=float, help="default: the server's")
    p.add_argument("--camera", action="append", help="only keys from this camera (repeatable)")
    p.add_argument("--identity", action="append", help="only keys of this identity (repeatable)")
    p.add_argument("--t-from", type=float, default=0.0)
    p.add_argument("--t-to", type=float, default=0.0)
    p.add_argument("--grant-out", help="write the reveal grant of the first accepted probe to this file")
    p.add_argument("--ann-candidates", type=int, default=0, metavar="N",
                   help="ann stores: candidates per shard before the exact re-rank (default 0: the store's, sized "
                        "from the number of keys; limit: `facekeys stats` ann_max_candidates)")
    p.add_argument("--exact", action="store_true", help="ann stores: scan every key (slow at scale)")
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("recover", help="regenerate matched faces as PNG files (recovery service)")
    _client_flags(p, default=DEFAULT_RECOVERY)
    p.add_argument("--grant-file", required=True, help="written by `facekeys match --grant-out`")
    p.add_argument("--key", type=int, action="append", required=True, help="key id (repeatable)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--out-dir", default=".")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("reveal", help="reveal matched keys in archived videos (recovery service)")
    _client_flags(p, default=DEFAULT_RECOVERY)
    p.add_argument("--grant-file", required=True, help="written by `facekeys match --grant-out`")
    p.add_argument("--key", type=int, action="append", required=True, help="key id (repeatable)")
    p.add_argument("--video", action="append", required=True,
                   help="archive-relative video, optionally VIDEO=OUTPUT (output-relative); repeatable")
    p.set_defaults(func=cmd_reveal)

    p = sub.add_parser("get", help="show one key's record")
    _client_flags(p)
    p.add_argument("key_id", type=int)
    p.add_argument("--latent-out", help="write the latent to this .npy file")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("delete", help="delete a key or a whole identity")
    _client_flags(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--key", type=int)
    g.add_argument("--identity")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("stats", help="key store statistics")
    _client_flags(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("identities", help="list identities with their key counts")
    _client_flags(p)
    p.add_argument("--after", default="")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(func=cmd_identities)

    for name, (module, extra) in _DELEGATED.items():
        p = sub.add_parser(name, help=f"see `facekeys {name} --help` (needs facekeys[{extra}])", add_help=False)
        p.set_defaults(func=None, delegate=(module, extra))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        module, extra = _DELEGATED[argv[0]]
        rest = argv if module == "facekeys.security.cli" else argv[1:]  # that one parses its group word
        return _run(lambda: _delegate(module, extra, rest))
    args = build_parser().parse_args(argv)
    return _run(lambda: args.func(args))


def _delegate(module: str, extra: str, argv: list[str]) -> int:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise InvalidArgument(f"this command needs `pip install facekeys[{extra}]` ({e})") from None
    return mod.main(argv)


def _run(fn: Callable[[], int]) -> int:
    try:
        return fn() or 0
    except FacekeysError as e:
        print(f"facekeys: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"facekeys: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except ImportError as e:
        print(f"facekeys: error: missing dependency ({e}); install the extra, e.g. pip install 'facekeys[server]'",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

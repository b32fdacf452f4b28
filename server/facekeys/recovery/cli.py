"""`facekeys recover-serve`: run the recovery service (called by `facekeys.cli` with the arguments after
the subcommand; returns the exit status)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from facekeys.cli import security_config, security_flags

from .reveal import PlacementConfig
from .video import CODECS, OutputVideoConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facekeys recover-serve",
        description="Regenerate matched faces (Recover) and reveal them in archived video (Reveal), "
                    "for callers holding a reveal grant from the key store's Match.")
    p.add_argument("--checkpoint", required=True,
                   help="generator weights: psp_ffhq_encode.pt (its decoder) or stylegan2-ffhq-config-f.pt")
    p.add_argument("--keystore", default="127.0.0.1:50051", help="key store address (latents are read from it)")
    p.add_argument("--keystore-token-file", help="bearer token of this service's `recovery` credential")
    p.add_argument("--keystore-tls-ca", help="CA certificate (PEM) of the key store: use TLS to it")
    p.add_argument("--grant-public-key", help="Ed25519 public key (PEM) of the key store's grant signer; "
                                               "without it Recover/Reveal answer FAILED_PRECONDITION")
    p.add_argument("--archive-root", help="folder of obfuscated videos Reveal may read (paths are relative to it)")
    p.add_argument("--output-root", help="folder revealed videos are written to (outside the archive)")
    p.add_argument("--accept-encoder-id", action="append", default=[],
                   help="also render keys of this encoder id (repeatable); a pSp checkpoint accepts its own")
    p.add_argument("--device", help="cuda or cpu (default: CUDA when available)")
    p.add_argument("--max-keys", type=int, default=16, help="keys per call")
    p.add_argument("--output-codec", choices=sorted(CODECS), default="h264-lossless",
                   help="revealed video codec: h264-lossless (MP4) / ffv1 (MKV) keep every other pixel exactly; "
                        "h264 (MP4, --crf) is smaller and plays everywhere but re-encodes lossily")
    p.add_argument("--crf", type=int, default=18, help="quality of --output-codec h264")
    p.add_argument("--margin", type=float, default=PlacementConfig.margin,
                   help="the indexer's obfuscation margin (box fraction per side) for keys that do not record it")
    p.add_argument("--feather", type=float, default=0.15, help="edge blend width (fraction of the region's smaller side)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=50052, help="gRPC port (0 = any free port)")
    p.add_argument("--metrics-port", type=int, default=9101, help="Prometheus port (-1 = off, 0 = any)")
    p.add_argument("--workers", type=int, default=4, help="gRPC handler threads")
    p.add_argument("--log-level", default="INFO")
    security_flags(p.add_argument_group("security (as `facekeys serve`; callers need role revealer)"),
                   signs_grants=False)
    return p


def config_from_args(args):
    from .app import RecoveryConfig

    def path(v):
        return Path(v) if v else None

    security = security_config(args)
    return RecoveryConfig(
        checkpoint=Path(args.checkpoint), keystore=args.keystore, keystore_token_file=path(args.keystore_token_file),
        keystore_tls_ca=path(args.keystore_tls_ca), grant_public_key=path(args.grant_public_key),
        archive_root=path(args.archive_root), output_root=path(args.output_root),
        accept_encoder_ids=tuple(args.accept_encoder_id), device=args.device, max_keys=args.max_keys,
        host=args.host, port=args.port, metrics_port=args.metrics_port, workers=args.workers,
        placement=PlacementConfig(margin=args.margin, feather=args.feather),
        output=OutputVideoConfig(codec=args.output_codec, crf=args.crf), security=security)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from facekeys.server.logs import setup_logging

    from .app import serve

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    serve(config_from_args(args))
    return 0

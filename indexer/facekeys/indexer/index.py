"""Batch indexing: archived videos -> obfuscated videos + one key per face track in the key store.

Per source video (in order; one failing video never stops the batch):

 1. video_id = sha256 of the source file; its journal says whether it is done, half-done or new.
 2. new: obfuscate to `<out_dir>/<camera>/<stem>-<video_id[:12]>.mp4` (written as `.partial`, renamed when
    complete), align + encode each track's best crop, write the keys to the spool, journal `spooled`.
 3. enrol the spooled keys that have no acknowledged key id yet (see `_enrol` for the crash window), journal
    `done`, drop the spool.

Idempotency (details in journal.py): a rerun skips `done` sources; a crash before `spooled` re-processes the
video from the start (nothing was enrolled yet); a crash after `spooled` resumes at step 3 from the spool.
A crash between the store's acknowledgement and the journal's `acked` line is resolved on the next run by
reading back the keys with ids >= the `enrolling` watermark (or, when the interrupted attempt could not read
the watermark, backwards from the newest key to the attempt's start time) and matching their (video_id,
track_id): exact in embedded mode and against a server when the credentials may call Stats and Get (admin
role, or an unsecured server). With an enrol-only (gateway) token the indexer cannot tell, so those keys are
enrolled at most once: the source is reported failed ("may or may not be stored") until a rerun with an
admin token reconciles it, or `resend_unconfirmed` accepts possible duplicates.

Errors of the key store itself (`SinkError`: unreachable, refused, full) stop the run: every later video
would fail the same way. The journal keeps what was done; a rerun continues.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from facekeys.errors import FacekeysError, InvalidArgument
from facekeys.records import NewKey, Obfuscation, Where, check_id

from .detect import DetectorConfig, make_detector
from .journal import Journal, SourceState, SpooledKey
from .obfuscate import ObfuscationConfig
from .pipeline import keys_for_tracks, obfuscate_video
from .sinks import KeySink, ScanNotAllowed, SinkError
from .track import Track, TrackerConfig
from .video import EncoderConfig, VideoReader

__all__ = ["Source", "IndexConfig", "FileResult", "RunResult", "Progress", "Indexer", "output_path"]

JOURNAL_DIRNAME = ".facekeys-journal"


@dataclass(frozen=True)
class Source:
    path: Path
    camera_id: str
    start_time: float | None = None  # Unix seconds of the video's first frame; None: times count from video start

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        check_id(self.camera_id, "camera_id", required=True)
        if self.start_time is not None and not np.isfinite(self.start_time):
            raise InvalidArgument(f"{self.path}: start_time must be finite, got {self.start_time}")


@dataclass(frozen=True)
class IndexConfig:
    out_dir: Path  # obfuscated videos go to <out_dir>/<camera>/<stem>-<video_id[:12]>.mp4
    journal_dir: Path | None = None  # None = <out_dir>/.facekeys-journal
    detector: DetectorConfig = DetectorConfig()
    tracker: TrackerConfig = TrackerConfig()
    obfuscation: ObfuscationConfig = ObfuscationConfig()
    video: EncoderConfig = EncoderConfig()  # H.264 output settings
    enroll_batch: int = 256  # keys per enrol request (~9.5 MB at float32 on the wire)
    encode_chunk: int = 64  # tracks aligned + encoded at a time (bounds memory on videos with many faces)
    min_side: int = 32  # a video narrower or lower than this is refused (no detectable face fits)
    resend_unconfirmed: bool = False  # server without read-back rights: re-send unconfirmed keys (may duplicate)

    def __post_init__(self):
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.journal_dir is not None:
            object.__setattr__(self, "journal_dir", Path(self.journal_dir))
        for name, typ in (("detector", DetectorConfig), ("tracker", TrackerConfig),
                          ("obfuscation", ObfuscationConfig), ("video", EncoderConfig)):
            if not isinstance(getattr(self, name), typ):
                raise InvalidArgument(f"IndexConfig.{name} must be a {typ.__name__}")
        if not 1 <= self.enroll_batch <= 4096:
            raise InvalidArgument(f"IndexConfig.enroll_batch must be in 1..4096, got {self.enroll_batch}")
        if self.encode_chunk < 1:
            raise InvalidArgument(f"IndexConfig.encode_chunk must be >= 1, got {self.encode_chunk}")
        if self.min_side < 1:
            raise InvalidArgument(f"IndexConfig.min_side must be >= 1, got {self.min_side}")

    @property
    def journal(self) -> Path:
        return self.journal_dir if self.journal_dir is not None else self.out_dir / JOURNAL_DIRNAME


@dataclass
class FileResult:
    path: Path
    camera_id: str
    status: str = "failed"  # "done" | "skipped" | "failed" | "not attempted"
    video_id: str = ""
    output: Path | None = None
    frames: int = 0
    tracks: int = 0
    keys: int = 0  # keys enrolled by this run (resumed ones included; recovered-after-crash ones too)
    seconds: float = 0.0  # whole file, wall clock
    seconds_video: float = 0.0  # decode + detect + track + obfuscate + encode + write
    seconds_keys: float = 0.0  # align + encode the best crops
    reason: str = ""  # why it failed or was skipped
    notes: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    results: list[FileResult]
    fatal: str | None = None  # the key store error that stopped the run

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status in ("failed", "not attempted")]

    @property
    def ok(self) -> bool:
        return self.fatal is None and not self.failed


class Progress:
    """Progress hooks (no-ops); the CLI plugs tqdm bars in."""

    def begin(self, source: Source, total_frames: int | None) -> None:
        pass

    def frame(self) -> None:
        pass

    def end(self, result: FileResult) -> None:
        pass


class _FileFailure(FacekeysError):
    code = "INVALID_ARGUMENT"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(name: str, limit: int = 80) -> str:
    s = _UNSAFE.sub("_", name).strip("._") or "_"
    return s[:limit]


def output_path(out_dir: Path, source: Source, video_id: str) -> Path:
    return Path(out_dir) / _safe(source.camera_id) / f"{_safe(source.path.stem)}-{video_id[:12]}.mp4"


def obfuscation_record(cfg: ObfuscationConfig) -> dict:
    """How the stored key's regions were obfuscated, in the records' vocabulary."""
    if cfg.method == "mosaic":
        return {"method": "mosaic", "strength": float(cfg.mosaic_blocks)}
    if cfg.method == "blur":
        return {"method": "gaussian", "strength": float(cfg.blur_sigma)}
    return {"method": "fill", "strength": 0.0}


def track_key_id(video_id: str, track: int) -> str:
    """Where.track_id of a key: deterministic, unique across videos."""
    return f"{video_id}:{track}"


class Indexer:
    """Runs sources through obfuscation, key extraction and enrolment, journalled.

    `encoder` (`facekeys.models.FaceEncoder` or anything with `.encode` and `.encoder_id`) and `sink` are
    both given (keys) or both None (obfuscation only).
    """

    def __init__(self, cfg: IndexConfig, *, encoder=None, sink: KeySink | None = None, detector=None,
                 progress: Progress | None = None):
        if (encoder is None) != (sink is None):
            raise InvalidArgument("keys need both an encoder and a key store (or neither, for obfuscation only)")
        self.cfg = cfg
        self.encoder, self.sink = encoder, sink
        self.detector = detector if detector is not None else make_detector(cfg.detector)
        self.progress = progress or Progress()
        self.encoder_id = encoder.encoder_id if encoder is not None else ""
        try:
            cfg.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidArgument(f"cannot create output folder {str(cfg.out_dir)!r}: {e}") from e

    @property
    def with_keys(self) -> bool:
        return self.encoder is not None

    def run(self, sources: list[Source], on_result: Callable[[FileResult], None] | None = None) -> RunResult:
        results: list[FileResult] = []
        seen: dict[str, Path] = {}  # video_id -> first path with that content in this run
        with Journal(self.cfg.journal) as journal:
            for i, src in enumerate(sources):
                try:
                    r = self._one(journal, src, seen)
                except SinkError as e:
                    r = FileResult(src.path, src.camera_id, reason=str(e))
                    self.progress.end(r)
                    results.append(r)
                    if on_result:
                        on_result(r)
                    for rest in sources[i + 1 :]:
                        results.append(FileResult(rest.path, rest.camera_id, "not attempted", reason="the run stopped"))
                    return RunResult(results, fatal=str(e))
                results.append(r)
                if on_result:
                    on_result(r)
        return RunResult(results)

    # -- one source ------------------------------------------------------------------------------------
    def _one(self, journal: Journal, src: Source, seen: dict[str, Path]) -> FileResult:
        r = FileResult(src.path, src.camera_id)
        t0 = time.perf_counter()
        try:
            self._process(journal, src, seen, r)
        except SinkError:
            raise
        except FacekeysError as e:  # VideoError, ScanNotAllowed, bad settings for this file, ...
            r.status, r.reason = "failed", str(e)
        except (OSError, av.error.FFmpegError, cv2.error) as e:
            r.status, r.reason = "failed", f"{type(e).__name__}: {e}"
        except Exception as e:  # a batch must go on past one bad file; the reason names the type
            r.status, r.reason = "failed", f"unexpected {type(e).__name__}: {e}"
        r.seconds = time.perf_counter() - t0
        if r.status == "failed" and r.video_id:
            journal.append(r.video_id, "failed", reason=r.reason)
        self.progress.end(r)
        return r

    def _process(self, journal: Journal, src: Source, seen: dict[str, Path], r: FileResult) -> None:
        path = src.path
        if not path.is_file():
            raise _FileFailure("does not exist or is not a file")
        if path.stat().st_size == 0:
            raise _FileFailure("empty file (0 bytes)")
        r.video_id = vid = journal.digest(path)
        if vid in seen:
            r.status, r.reason = "skipped", f"same content as {seen[vid]}"
            return
        seen[vid] = path
        st = journal.state(vid)
        if st.status == "done" and (st.done.get("with_keys") or not self.with_keys):
            r.status, r.reason = "skipped", "already indexed"
            r.output = Path(st.done["output"]) if st.done.get("output") else None
            return
        spooled_keys = st.status == "spooled" and st.spooled["with_keys"]
        if spooled_keys and not self.with_keys:
            raise _FileFailure("keys of an interrupted run wait to be enrolled: rerun with --store or --server")
        if st.status == "spooled" and spooled_keys == self.with_keys:
            r.notes.append("resumed after an interruption: output and keys from the earlier attempt")
        else:
            self._obfuscate_and_spool(journal, src, r)
            st = journal.state(vid)
        r.output, r.frames, r.tracks = Path(st.spooled["output"]), st.spooled["frames"], st.spooled["face_tracks"]
        if self.with_keys:
            r.keys = self._enrol(journal, st)
        journal.append(vid, "done", keys=len(st.spooled["tracks"]), output=st.spooled["output"],
                       with_keys=self.with_keys)
        journal.drop_spool(vid)
        r.status = "done"
        if not r.tracks:
            r.notes.append("no faces found")

    def _obfuscate_and_spool(self, journal: Journal, src: Source, r: FileResult) -> None:
        vid = r.video_id
        journal.append(vid, "start", path=str(src.path), camera_id=src.camera_id)
        t0 = time.perf_counter()
        with VideoReader(src.path) as reader:  # probe: size, frame count; fails fast on unreadable files
            info = reader.info
        if min(info.width, info.height) < self.cfg.min_side:
            raise _FileFailure(f"resolution {info.width}x{info.height} is too small for face detection "
                               f"(min {self.cfg.min_side} px a side)")
        if info.width % 2 or info.height % 2:
            r.notes.append(f"odd resolution {info.width}x{info.height}: output padded to "
                           f"{info.width + info.width % 2}x{info.height + info.height % 2}")
        out = output_path(self.cfg.out_dir, src, vid)
        out.parent.mkdir(parents=True, exist_ok=True)
        frames = 0

        def on_frame(_index: int) -> None:
            nonlocal frames
            frames += 1
            self.progress.frame()

        self.progress.begin(src, info.frames or None)
        tracks = obfuscate_video(src.path, out, self.detector, self.cfg.tracker, self.cfg.obfuscation, self.cfg.video,
                                 on_frame=on_frame)
        r.seconds_video = time.perf_counter() - t0
        if info.frames and frames < info.frames:
            r.notes.append(f"decoded {frames} of the {info.frames} frames the container announces (truncated?)")
        tracks.sort(key=lambda t: t.track_id)
        obf = obfuscation_record(self.cfg.obfuscation)
        if self.with_keys:
            t1 = time.perf_counter()
            keys = self._keys(src, vid, tracks)
            r.seconds_keys = time.perf_counter() - t1
            journal.write_spool(vid, keys)
        journal.append(vid, "spooled", tracks=[t.track_id for t in tracks] if self.with_keys else [],
                       output=str(out), frames=frames, with_keys=self.with_keys, encoder_id=self.encoder_id,
                       camera_id=src.camera_id, obfuscation=obf, face_tracks=len(tracks))
        r.tracks = len(tracks)

    def _keys(self, src: Source, vid: str, tracks: list[Track]) -> list[SpooledKey]:
        t_origin = src.start_time if src.start_time is not None else 0.0
        timing = "absolute" if src.start_time is not None else "relative"
        out = []
        for i in range(0, len(tracks), self.cfg.encode_chunk):
            chunk = tracks[i : i + self.cfg.encode_chunk]
            latents = keys_for_tracks(chunk, self.encoder)  # (B, 18, 512)
            for t, lat in zip(chunk, latents):
                out.append(SpooledKey(
                    track=t.track_id, latent=lat, boxes=np.asarray(t.boxes, np.int32).reshape(-1, 5),
                    t_start=t_origin + t.timestamps[0], t_end=t_origin + t.timestamps[-1],
                    attributes={"source_digest": vid, "track": str(t.track_id), "time": timing,
                                "detected_frames": str(sum(t.detected)), "best_frame": str(t.best_frame)},
                ))
        return out

    # -- enrolment ---------------------------------------------------------------------------------------
    def _enrol(self, journal: Journal, st: SourceState) -> int:
        """Enrol the spooled keys without an acknowledged key id; returns how many keys this call accounted
        for (sent now, or found already stored after a crash)."""
        vid, sp = st.digest, st.spooled
        todo = st.unconfirmed
        if not todo:
            return 0
        count = 0
        if st.enrolling:  # an earlier attempt may have stored keys whose acknowledgement was never journalled
            marks = [e.get("watermark") for e in st.enrolling]
            lo = None if any(m is None for m in marks) else min(marks)
            since = min(e["at"] for e in st.enrolling)
            try:
                found = self.sink.find(vid, {track_key_id(vid, t) for t in todo}, lo, since)  # track id -> key id
            except ScanNotAllowed as e:
                if not self.cfg.resend_unconfirmed:
                    raise _FileFailure(
                        f"{len(todo)} key(s) of an interrupted enrolment may or may not be stored and cannot be "
                        f"checked ({e}); rerun with credentials allowed to call Stats and Get, or with "
                        "--resend-unconfirmed (may duplicate those keys)") from e
                found = {}
            hit = [t for t in todo if track_key_id(vid, t) in found]
            if hit:
                journal.append(vid, "acked", tracks=hit, key_ids=[found[track_key_id(vid, t)] for t in hit],
                               recovered=True)
                count += len(hit)
                todo = [t for t in todo if t not in set(hit)]
            if not todo:
                return count
        spooled = {k.track: k for k in journal.read_spool(vid)}
        missing = [t for t in todo if t not in spooled]
        if missing:
            raise _FileFailure(f"key spool lacks tracks {missing[:5]}; delete {journal.spool_path(vid)} and its "
                               "journal to re-index this video")
        obf = Obfuscation(sp["obfuscation"]["method"], sp["obfuscation"]["strength"])
        keys = [
            NewKey(
                latent=spooled[t].latent, encoder_id=sp["encoder_id"], identity_id="",
                where=Where(sp["camera_id"], vid, track_key_id(vid, t), spooled[t].t_start, spooled[t].t_end,
                            spooled[t].boxes),
                obfuscation=obf, attributes=spooled[t].attributes,
            )
            for t in todo
        ]
        n = self.cfg.enroll_batch
        batches = [keys[i : i + n] for i in range(0, len(keys), n)]
        tracks = [todo[i : i + n] for i in range(0, len(todo), n)]
        journal.append(vid, "enrolling", watermark=self.sink.watermark(), keys=len(keys))
        acked = 0
        for b_tracks, key_ids in zip(tracks, self.sink.enroll(batches)):
            if len(key_ids) != len(b_tracks):
                raise SinkError(f"{self.sink.name}: acknowledged {len(key_ids)} keys for a batch of {len(b_tracks)}")
            journal.append(vid, "acked", tracks=b_tracks, key_ids=key_ids)
            count += len(key_ids)
            acked += 1
        if acked != len(batches):
            raise SinkError(f"{self.sink.name}: the enrol stream ended after {acked} of {len(batches)} batches")
        return count

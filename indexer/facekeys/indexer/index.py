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

Step 2's obfuscation and key extraction (`extract_video`) runs where the `Extractor` says: in this process,
one video at a time, or on a Ray cluster (cluster.py), several at once. Only this process writes the
journal and the spool and enrols, so the guarantees above hold whatever runs the videos.

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

__all__ = ["Source", "IndexConfig", "FileResult", "RunResult", "Progress", "Indexer", "output_path", "Extracted",
           "Extractor", "extract_video", "failure_reason"]

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


@dataclass
class Extracted:
    """What one video's obfuscation and key extraction produced, before the journal and the store take over
    (made by `extract_video`, in this process or on a cluster worker)."""

    output: str  # the complete obfuscated video (renamed into place)
    frames: int
    face_tracks: int
    tracks: list[int]  # track numbers of the keys (empty without keys)
    keys: list[SpooledKey]  # one per track in `tracks`
    encoder_id: str  # "" without keys
    seconds_video: float = 0.0
    seconds_keys: float = 0.0
    notes: list[str] = field(default_factory=list)


def failure_reason(e: Exception) -> str:
    """One video's failure as the report states it (the batch goes on)."""
    if isinstance(e, FacekeysError):  # VideoError, ScanNotAllowed, bad settings for this file, ...
        return str(e)
    if isinstance(e, (OSError, av.error.FFmpegError, cv2.error)):
        return f"{type(e).__name__}: {e}"
    return f"unexpected {type(e).__name__}: {e}"


def extract_video(cfg: IndexConfig, src: Source, video_id: str, detector, encoder=None,
                  progress: Progress | None = None) -> Extracted:
    """Obfuscate `src` into `output_path(cfg.out_dir, src, video_id)` and, with an `encoder`, compute one key
    per face track. Touches no journal and no key store: the caller records and enrols the result."""
    progress = progress or Progress()
    notes: list[str] = []
    t0 = time.perf_counter()
    with VideoReader(src.path) as reader:  # probe: size, frame count; fails fast on unreadable files
        info = reader.info
    if min(info.width, info.height) < cfg.min_side:
        raise _FileFailure(f"resolution {info.width}x{info.height} is too small for face detection "
                           f"(min {cfg.min_side} px a side)")
    if info.width % 2 or info.height % 2:
        notes.append(f"odd resolution {info.width}x{info.height}: output padded to "
                     f"{info.width + info.width % 2}x{info.height + info.height % 2}")
    out = output_path(cfg.out_dir, src, video_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = 0

    def on_frame(_index: int) -> None:
        nonlocal frames
        frames += 1
        progress.frame()

    progress.begin(src, info.frames or None)
    tracks = obfuscate_video(src.path, out, detector, cfg.tracker, cfg.obfuscation, cfg.video, on_frame=on_frame)
    seconds_video = time.perf_counter() - t0
    if info.frames and frames < info.frames:
        notes.append(f"decoded {frames} of the {info.frames} frames the container announces (truncated?)")
    tracks.sort(key=lambda t: t.track_id)
    keys: list[SpooledKey] = []
    seconds_keys = 0.0
    if encoder is not None:
        t1 = time.perf_counter()
        keys = _keys(cfg, src, video_id, tracks, encoder)
        seconds_keys = time.perf_counter() - t1
    return Extracted(str(out), frames, len(tracks), [t.track_id for t in tracks] if encoder is not None else [], keys,
                     encoder.encoder_id if encoder is not None else "", seconds_video, seconds_keys, notes)


def _keys(cfg: IndexConfig, src: Source, vid: str, tracks: list[Track], encoder) -> list[SpooledKey]:
    t_origin = src.start_time if src.start_time is not None else 0.0
    timing = "absolute" if src.start_time is not None else "relative"
    out = []
    for i in range(0, len(tracks), cfg.encode_chunk):
        chunk = tracks[i : i + cfg.encode_chunk]
        latents = keys_for_tracks(chunk, encoder)  # (B, 18, 512)
        for t, lat in zip(chunk, latents):
            out.append(SpooledKey(
                track=t.track_id, latent=lat, boxes=np.asarray(t.boxes, np.int32).reshape(-1, 5),
                t_start=t_origin + t.timestamps[0], t_end=t_origin + t.timestamps[-1],
                attributes={"source_digest": vid, "track": str(t.track_id), "time": timing,
                            "detected_frames": str(sum(t.detected)), "best_frame": str(t.best_frame),
                            "obfuscation_margin": repr(float(cfg.obfuscation.margin))},  # what Reveal restores
            ))
    return out


class Extractor:
    """Where `extract_video` runs for the Indexer, which keeps the journal and the enrolment to itself.

    The Indexer hands over up to `slots` videos at a time (`submit`) and takes back finished ones (`wait`:
    at least one `(ticket, Extracted | failure reason)` while any is in flight). This one runs each video in
    this process, at `submit`; `facekeys.indexer.cluster.RayExtractor` runs them on a Ray cluster.
    """

    slots = 1
    with_keys: bool | None = None  # None: keys iff the Indexer has an encoder

    def bind(self, indexer: Indexer) -> None:
        self.indexer = indexer
        self._done: list[tuple[object, Extracted | str]] = []

    def submit(self, ticket, src: Source, video_id: str) -> None:
        ix = self.indexer
        try:
            out: Extracted | str = extract_video(ix.cfg, src, video_id, ix.detector, ix.encoder, ix.progress)
        except Exception as e:  # one bad video; BaseException (a kill, ^C) ends the run
            out = failure_reason(e)
        self._done.append((ticket, out))

    def wait(self) -> list[tuple[object, Extracted | str]]:
        done, self._done = self._done, []
        return done

    def cancel(self) -> None:
        self._done = []


class Indexer:
    """Runs sources through obfuscation, key extraction and enrolment, journalled.

    `encoder` (`facekeys.models.FaceEncoder` or anything with `.encode` and `.encoder_id`) and `sink` are
    both given (keys) or both None (obfuscation only). With an `extractor` whose `with_keys` is set (a
    cluster), the videos are processed there: no detector or encoder here, `sink` given iff it makes keys.
    This process alone writes the journal and enrols, whichever extractor runs the videos.
    """

    def __init__(self, cfg: IndexConfig, *, encoder=None, sink: KeySink | None = None, detector=None,
                 progress: Progress | None = None, extractor: Extractor | None = None):
        remote = extractor is not None and extractor.with_keys is not None
        if remote:
            if encoder is not None or detector is not None:
                raise InvalidArgument("a remote extractor brings its own detector and encoder")
            if extractor.with_keys != (sink is not None):
                raise InvalidArgument("an extractor making keys needs a key store (and one making none, none)")
        elif (encoder is None) != (sink is None):
            raise InvalidArgument("keys need both an encoder and a key store (or neither, for obfuscation only)")
        self.cfg = cfg
        self.encoder, self.sink = encoder, sink
        self.detector = detector if detector is not None or remote else make_detector(cfg.detector)
        self.progress = progress or Progress()
        self.encoder_id = encoder.encoder_id if encoder is not None else ""
        self.extractor = extractor if extractor is not None else Extractor()
        self.extractor.bind(self)
        try:
            cfg.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidArgument(f"cannot create output folder {str(cfg.out_dir)!r}: {e}") from e

    @property
    def with_keys(self) -> bool:
        return self.sink is not None

    def run(self, sources: list[Source], on_result: Callable[[FileResult], None] | None = None) -> RunResult:
        """Index `sources`; `on_result` hears of each video as it finishes. Results come back in source order."""
        results: list[FileResult | None] = [None] * len(sources)
        seen: dict[str, Path] = {}  # video_id -> first path with that content in this run
        flight: dict[int, tuple[FileResult, float]] = {}  # source index -> (its result so far, start time)
        ex = self.extractor

        def finish(i: int, r: FileResult, t0: float) -> None:
            r.seconds = time.perf_counter() - t0
            self.progress.end(r)
            results[i] = r
            if on_result:
                on_result(r)

        with Journal(self.cfg.journal) as journal:
            nxt, current = 0, None
            try:
                while nxt < len(sources) or flight:
                    while nxt < len(sources) and len(flight) < ex.slots:
                        i, src = nxt, sources[nxt]
                        nxt += 1
                        r, t0 = FileResult(src.path, src.camera_id), time.perf_counter()
                        current = (i, r, t0)
                        if self._guard(journal, r, lambda: self._plan(journal, src, seen, r)):
                            journal.append(r.video_id, "start", path=str(src.path), camera_id=src.camera_id)
                            ex.submit(i, src, r.video_id)
                            flight[i] = (r, t0)
                        else:
                            finish(i, r, t0)
                        current = None
                    if flight:
                        for i, out in ex.wait():
                            r, t0 = flight.pop(i)
                            current = (i, r, t0)
                            self._guard(journal, r, lambda: self._complete(journal, sources[i], r, out))
                            finish(i, r, t0)
                            current = None
            except SinkError as e:
                ex.cancel()
                if current is not None:
                    i, r, t0 = current
                    flight.pop(i, None)
                    r.status, r.reason = "failed", str(e)
                    finish(i, r, t0)
                for i, (r, _) in flight.items():
                    r.status, r.reason = "not attempted", "the run stopped"
                    results[i] = r
                for i in range(len(sources)):
                    if results[i] is None:
                        results[i] = FileResult(sources[i].path, sources[i].camera_id, "not attempted",
                                                reason="the run stopped")
                return RunResult(results, fatal=str(e))
        return RunResult(results)

    # -- one source ------------------------------------------------------------------------------------
    def _guard(self, journal: Journal, r: FileResult, step: Callable[[], bool | None]) -> bool:
        """Run one step of a source; a failure of that source (not of the store) marks it failed."""
        try:
            return bool(step())
        except SinkError:
            raise
        except Exception as e:  # a batch must go on past one bad file; the reason names the type
            r.status, r.reason = "failed", failure_reason(e)
        if r.video_id:
            journal.append(r.video_id, "failed", reason=r.reason)
        return False

    def _plan(self, journal: Journal, src: Source, seen: dict[str, Path], r: FileResult) -> bool:
        """Skip, resume (enrol a spool) or: True, the video is to be processed from the start."""
        path = src.path
        if not path.is_file():
            raise _FileFailure("does not exist or is not a file")
        if path.stat().st_size == 0:
            raise _FileFailure("empty file (0 bytes)")
        r.video_id = vid = journal.digest(path)
        if vid in seen:
            r.status, r.reason = "skipped", f"same content as {seen[vid]}"
            return False
        seen[vid] = path
        st = journal.state(vid)
        if st.status == "done" and (st.done.get("with_keys") or not self.with_keys):
            r.status, r.reason = "skipped", "already indexed"
            r.output = Path(st.done["output"]) if st.done.get("output") else None
            return False
        spooled_keys = st.status == "spooled" and st.spooled["with_keys"]
        if spooled_keys and not self.with_keys:
            raise _FileFailure("keys of an interrupted run wait to be enrolled: rerun with --store or --server")
        if st.status == "spooled" and spooled_keys == self.with_keys:
            r.notes.append("resumed after an interruption: output and keys from the earlier attempt")
            self._finish(journal, st, r)
            return False
        return True

    def _complete(self, journal: Journal, src: Source, r: FileResult, out: Extracted | str) -> None:
        """Journal a processed video (spool its keys), then enrol them and mark it done."""
        if isinstance(out, str):
            raise _FileFailure(out)
        vid = r.video_id
        r.notes += out.notes
        r.seconds_video, r.seconds_keys = out.seconds_video, out.seconds_keys
        if self.with_keys:
            journal.write_spool(vid, out.keys)
        journal.append(vid, "spooled", tracks=out.tracks if self.with_keys else [], output=out.output,
                       frames=out.frames, with_keys=self.with_keys, encoder_id=out.encoder_id or self.encoder_id,
                       camera_id=src.camera_id, obfuscation=obfuscation_record(self.cfg.obfuscation),
                       face_tracks=out.face_tracks)
        self._finish(journal, journal.state(vid), r)

    def _finish(self, journal: Journal, st: SourceState, r: FileResult) -> None:
        vid = st.digest
        r.output, r.frames, r.tracks = Path(st.spooled["output"]), st.spooled["frames"], st.spooled["face_tracks"]
        if self.with_keys:
            r.keys = self._enrol(journal, st)
        journal.append(vid, "done", keys=len(st.spooled["tracks"]), output=st.spooled["output"],
                       with_keys=self.with_keys)
        journal.drop_spool(vid)
        r.status = "done"
        if not r.tracks:
            r.notes.append("no faces found")

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

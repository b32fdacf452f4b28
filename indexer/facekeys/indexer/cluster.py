"""`facekeys index --ray`: the indexer's videos processed on a Ray cluster, exactly once.

One Ray task per video runs the indexer's own `extract_video` (decode, detect, track, obfuscate, write the
output video, align + encode each track's best crop) on a worker; the detector and the encoder are loaded
once per worker process and kept for its later tasks. The driver (the `facekeys index` process) keeps what
makes a run exactly once to itself, as on one machine: it alone holds the journal (its flock), writes the
key spool and the journal events, and enrols over its one key store connection. A worker touches neither.

Exactly once:

* a video finished (journal `done`) is skipped by every later run, whichever worker produced it;
* a worker killed mid-video (kill -9, a lost node) returns nothing: Ray runs the task again (up to
  `RayConfig.max_retries` times) and only the attempt that returns is journalled and enrolled, so no key is
  sent twice. The output video is written as `<name>.mp4.partial` and renamed when complete (VideoWriter),
  so a killed attempt leaves at most a `.partial`, which the next attempt overwrites, or the driver removes
  when the video finally fails;
* the driver itself killed: the journal resumes as on one machine (`spooled` videos are enrolled from the
  spool, an interrupted enrolment is reconciled by reading keys back).

Every node must see the sources, the output folder and the encoder checkpoint at the same paths (a shared
file system); the journal folder need only be the driver's.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from facekeys.errors import FailedPrecondition, InvalidArgument

from .index import Extracted, Extractor, IndexConfig, Progress, Source, extract_video, failure_reason, output_path

__all__ = ["RayConfig", "RayExtractor", "WorkerEvent"]


@dataclass(frozen=True)
class RayConfig:
    address: str = "auto"  # "auto" (a running `ray start` cluster), "local" (start one here), host:port, ray://...
    cpus_per_task: float = 1.0  # Ray CPUs a video's task asks for
    gpus_per_task: float = 0.0  # > 0: the task runs on a GPU node and the encoder uses CUDA
    max_retries: int = 3  # times a video's task is rerun after its worker died
    in_flight: int = 0  # videos handed to the cluster at a time; 0 = twice the tasks the cluster fits at once
    num_cpus: int | None = None  # address "local" only: the CPUs of the local cluster (None: all)

    def __post_init__(self):
        if not self.address or not isinstance(self.address, str):
            raise InvalidArgument("RayConfig.address must be 'auto', 'local', host:port or ray://host:port")
        if not self.cpus_per_task > 0:
            raise InvalidArgument(f"RayConfig.cpus_per_task must be > 0, got {self.cpus_per_task}")
        if self.gpus_per_task < 0:
            raise InvalidArgument(f"RayConfig.gpus_per_task must be >= 0, got {self.gpus_per_task}")
        if not 0 <= self.max_retries <= 100:
            raise InvalidArgument(f"RayConfig.max_retries must be in 0..100, got {self.max_retries}")
        if self.in_flight < 0:
            raise InvalidArgument(f"RayConfig.in_flight must be >= 0, got {self.in_flight}")
        if self.num_cpus is not None and (self.address != "local" or self.num_cpus < 1):
            raise InvalidArgument("RayConfig.num_cpus (>= 1) goes with address 'local' only")


@dataclass(frozen=True)
class WorkerEvent:
    """What a worker reports to the driver while it works on a video."""

    kind: str  # "begin" (frames = the container's count, 0 unknown) | "frames" (frames since the last report)
    video_id: str
    attempt: str  # "<host>:<pid>" of the worker process
    pid: int
    frames: int


# -- worker side ---------------------------------------------------------------------------------------------
_MODELS: dict[tuple, tuple] = {}  # per worker process: (detector config, checkpoint, device) -> (detector, encoder)


def _models(cfg: IndexConfig, checkpoint: str | None, device: str | None):
    key = (cfg.detector, checkpoint, device)
    if key not in _MODELS:
        from .detect import make_detector

        encoder = None
        if checkpoint is not None:
            from facekeys.models import FaceEncoder

            encoder = FaceEncoder(Path(checkpoint), device=device)
        _MODELS[key] = (make_detector(cfg.detector), encoder)
    return _MODELS[key]


class _Reporter(Progress):
    """Progress hooks of one task, sent to the driver's event actor (batched: every 0.25 s)."""

    def __init__(self, events, video_id: str):
        self.events, self.vid, self.pid = events, video_id, os.getpid()
        self.attempt = f"{socket.gethostname()}:{self.pid}"
        self.pending, self.last = 0, time.monotonic()

    def _send(self, kind: str, frames: int) -> None:
        self.events.push.remote(WorkerEvent(kind, self.vid, self.attempt, self.pid, frames))

    def begin(self, source, total_frames):
        self._send("begin", total_frames or 0)

    def frame(self):
        self.pending += 1
        if time.monotonic() - self.last >= 0.25:
            self.flush()

    def flush(self):
        if self.pending:
            self._send("frames", self.pending)
        self.pending, self.last = 0, time.monotonic()


def _index_video(cfg: IndexConfig, checkpoint: str | None, device: str | None, src: Source, video_id: str,
                 events) -> Extracted | str:
    """The Ray task: one video through the indexer's pipeline on this worker. A failure of the video comes
    back as its reason (a str); the worker process dying is Ray's to retry."""
    rep = _Reporter(events, video_id)
    try:
        detector, encoder = _models(cfg, checkpoint, device)
        out = extract_video(cfg, src, video_id, detector, encoder, rep)
    except Exception as e:  # this video failed; the batch goes on
        return failure_reason(e)
    finally:
        rep.flush()
    return out


class _Events:
    """Ray actor: the workers' progress reports, drained by the driver."""

    def __init__(self):
        self.items: list[WorkerEvent] = []

    def push(self, ev: WorkerEvent) -> None:
        self.items.append(ev)

    def drain(self) -> list[WorkerEvent]:
        out, self.items = self.items, []
        return out


# -- driver side ---------------------------------------------------------------------------------------------
class RayExtractor(Extractor):
    """The Indexer's videos run as Ray tasks. Use as a context manager (connects to the cluster, and
    disconnects, or stops the local cluster it started):

        with RayExtractor(RayConfig("auto"), checkpoint="psp.pt") as ex:
            Indexer(cfg, sink=ServerSink(...), extractor=ex).run(sources)

    The tasks run with the IndexConfig of the Indexer it serves (one extractor can serve several in turn).

    `checkpoint` None: obfuscation only (no keys). `watch(WorkerEvent)` hears every worker report (a log, a
    test's hand on the kill switch). After the run: `retried` = video ids whose task had to be redone.
    """

    def __init__(self, ray_cfg: RayConfig, *, checkpoint: str | os.PathLike | None = None,
                 encoder_device: str | None = None, watch=None):
        if not isinstance(ray_cfg, RayConfig):
            raise InvalidArgument("RayExtractor takes a RayConfig")
        self.ray_cfg, self.watch = ray_cfg, watch
        self.checkpoint = str(Path(checkpoint).resolve()) if checkpoint is not None else None
        self.with_keys = checkpoint is not None
        self.device = "cuda" if ray_cfg.gpus_per_task > 0 else encoder_device
        self.retried: set[str] = set()
        self.workers: set[str] = set()  # "<host>:<pid>" of every worker process that began a video
        self.started_cluster = False
        self._ray = self._task = self._events = None
        self._refs: dict = {}  # ObjectRef -> (ticket, source, video_id)
        self._attempt: dict[str, str] = {}  # video_id -> the worker of its latest attempt

    # -- cluster ---------------------------------------------------------------------------------------
    def __enter__(self):
        try:
            import ray
        except ImportError as e:
            raise FailedPrecondition("--ray needs Ray: pip install 'facekeys[cluster]'") from e
        self._ray = ray
        if not ray.is_initialized():
            kw = {"num_cpus": self.ray_cfg.num_cpus} if self.ray_cfg.address == "local" else {}
            try:
                ray.init(address=self.ray_cfg.address, logging_level="WARNING", log_to_driver=False, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise FailedPrecondition(f"cannot reach the Ray cluster at {self.ray_cfg.address!r}: {e}") from e
            self.started_cluster = True
        self._task = ray.remote(_index_video).options(
            num_cpus=self.ray_cfg.cpus_per_task, num_gpus=self.ray_cfg.gpus_per_task,
            max_retries=self.ray_cfg.max_retries, retry_exceptions=False)
        self._events = ray.remote(_Events).options(num_cpus=0).remote()
        fit = ray.cluster_resources().get("CPU", 1) / self.ray_cfg.cpus_per_task
        if self.ray_cfg.gpus_per_task > 0:
            fit = min(fit, ray.cluster_resources().get("GPU", 0) / self.ray_cfg.gpus_per_task)
        if fit < 1:
            raise FailedPrecondition(f"the Ray cluster cannot fit one task ({self.ray_cfg.cpus_per_task} CPU, "
                                     f"{self.ray_cfg.gpus_per_task} GPU): {ray.cluster_resources()}")
        self.slots = self.ray_cfg.in_flight or max(1, int(2 * fit))
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._ray is None:
            return
        self.cancel()
        if self._events is not None:
            self._ray.kill(self._events)
            self._events = None
        if self.started_cluster:
            self._ray.shutdown()
        self._ray = None

    def nodes(self) -> int:
        return sum(1 for n in self._ray.nodes() if n.get("Alive"))

    # -- Extractor -------------------------------------------------------------------------------------
    def submit(self, ticket, src: Source, video_id: str) -> None:
        if self._task is None:
            raise FailedPrecondition("RayExtractor is used as a context manager (with ...)")
        ref = self._task.remote(self.indexer.cfg, self.checkpoint, self.device, src, video_id, self._events)
        self._refs[ref] = (ticket, src, video_id)

    def wait(self) -> list[tuple[object, Extracted | str]]:
        ray = self._ray
        while True:
            ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=0.25)
            self._pump()
            if ready:
                break
        ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        out = []
        for ref in ready:
            ticket, src, vid = self._refs.pop(ref)
            try:
                res = ray.get(ref)
            except ray.exceptions.RayError as e:  # retries used up (worker died each time), or the task was lost
                res = f"the cluster lost this video's task {self.ray_cfg.max_retries + 1} time(s): " \
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if isinstance(res, str):  # failed: no half-written output may stay behind
                o = output_path(self.indexer.cfg.out_dir, src, vid)
                o.with_name(o.name + ".partial").unlink(missing_ok=True)
            elif vid in self.retried:
                res.notes.append("redone after a cluster worker was lost mid-video")
            out.append((ticket, res))
        return out

    def _pump(self) -> None:
        """Worker reports -> progress hooks (frames of an attempt that was lost are counted again)."""
        for ev in self._ray.get(self._events.drain.remote()):
            if ev.kind == "begin":
                self.workers.add(ev.attempt)
                if ev.video_id in self._attempt:
                    self.retried.add(ev.video_id)
                self._attempt[ev.video_id] = ev.attempt
                self.indexer.progress.begin(self._source(ev.video_id), ev.frames or None)
            elif ev.kind == "frames":
                for _ in range(ev.frames):
                    self.indexer.progress.frame()
            if self.watch is not None:
                self.watch(ev)

    def _source(self, video_id: str) -> Source | None:
        return next((s for _, s, v in self._refs.values() if v == video_id), None)

    def cancel(self) -> None:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        self._refs.clear()

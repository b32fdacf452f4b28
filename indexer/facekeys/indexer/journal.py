"""Per-source journal and key spool: what makes `facekeys index` resumable and idempotent.

One append-only JSON-lines file per source video, named by the video's content digest (sha256 of the
source file = its `video_id`), in the journal folder. Every line is flushed and fsync'd before the step it
announces runs. Events, in order:

    start      {"path", "camera_id"}                          processing began (informative)
    spooled    {"tracks": [n, ...], "output", "frames"}       obfuscated output is complete (renamed into
                                                              place) and the keys are in the spool file
    enrolling  {"watermark": next_key_id | null}              about to send keys; every key sent after this
                                                              gets a key id >= watermark
    acked      {"tracks": [n, ...], "key_ids": [...], "recovered": bool}
                                                              the store acknowledged these keys (durable)
    done       {"keys", "output"}                             finished; a rerun skips this source
    failed     {"reason"}                                     this attempt failed; a rerun tries again

The spool (`<digest>.keys.npz`, mode 0600) holds the keys of a spooled source until it is done, so a resumed
enrolment sends exactly the keys computed the first time (no re-decoding, no dependence on the detector
being deterministic). It contains face latents: protect the journal folder like the key store.

A crash can tear the last line only; a torn last line is ignored on reading.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facekeys.errors import FailedPrecondition, InvalidArgument

__all__ = ["Journal", "SourceState", "SpooledKey", "file_digest"]

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """sha256 hex of the file's bytes, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SpooledKey:
    """One track's key as it will be enrolled."""

    track: int  # the tracker's track number within the video
    latent: np.ndarray  # (18, 512) float32
    boxes: np.ndarray  # (M, 5) int32: frame_index, x, y, w, h (every obfuscated frame of the track)
    t_start: float  # seconds (capture time when the source has a start time, else from the video start)
    t_end: float
    attributes: dict = field(default_factory=dict)  # str -> str, stored with the key


@dataclass
class SourceState:
    """A source's journal replayed."""

    digest: str
    events: list[dict] = field(default_factory=list)
    spooled: dict | None = None  # the last `spooled` event
    enrolling: list[dict] = field(default_factory=list)  # `enrolling` events after the last `spooled`
    acked: dict[int, int] = field(default_factory=dict)  # track -> key id, after the last `spooled`
    done: dict | None = None
    failed: dict | None = None  # the last `failed` event, when nothing succeeded after it

    @property
    def status(self) -> str:
        """"done" | "spooled" (resume at enrolment) | "failed" | "new" (process from the start)."""
        if self.done is not None:
            return "done"
        if self.spooled is not None:
            return "spooled"
        return "failed" if self.failed is not None else "new"

    @property
    def unconfirmed(self) -> list[int]:
        """Spooled tracks without an acknowledged key id."""
        tracks = self.spooled["tracks"] if self.spooled else []
        return [t for t in tracks if t not in self.acked]


class Journal:
    """The journal folder. Holds an exclusive lock while open: one indexer per journal at a time."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.root / ".lock", "a+")
        except OSError as e:
            raise InvalidArgument(f"cannot use journal folder {str(self.root)!r}: {e}") from e
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise FailedPrecondition(f"journal {str(self.root)!r} is in use by another `facekeys index`") from None
        self._digests = self._load_digest_cache()

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- digests (cached by path, size and mtime so a rerun does not re-hash every file) ---------------
    def _load_digest_cache(self) -> dict[tuple[str, int, int], str]:
        out = {}
        p = self.root / "digests.jsonl"
        if p.exists():
            for line in p.read_text().splitlines():
                try:
                    r = json.loads(line)
                    out[(r["path"], int(r["size"]), int(r["mtime_ns"]))] = str(r["sha256"])
                except (ValueError, KeyError, TypeError):
                    continue  # torn or foreign line: just re-hash that file
        return out

    def digest(self, path: Path) -> str:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        d = self._digests.get(key)
        if d is None:
            d = file_digest(path)
            self._digests[key] = d
            with open(self.root / "digests.jsonl", "a") as f:
                f.write(json.dumps({"path": key[0], "size": key[1], "mtime_ns": key[2], "sha256": d}) + "\n")
        return d

    # -- events ------------------------------------------------------------------------------------
    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidArgument(f"not a sha256 hex digest: {digest!r}")
        return self.root / f"{digest}.jsonl"

    def spool_path(self, digest: str) -> Path:
        return self._path(digest).with_suffix(".keys.npz")

    def append(self, digest: str, event: str, **data) -> None:
        """Append one event durably (write, flush, fsync) before the caller goes on."""
        p = self._path(digest)
        new = not p.exists()
        line = json.dumps({"ev": event, "at": round(time.time(), 3), **data}, separators=(",", ":"))
        with open(p, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        if new:
            _fsync_dir(self.root)

    def state(self, digest: str) -> SourceState:
        st = SourceState(digest)
        p = self._path(digest)
        if not p.exists():
            return st
        lines = p.read_text().split("\n")
        for i, line in enumerate(lines):
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                if i == len(lines) - 1:  # torn by a crash mid-write: the step it announced never ran
                    break
                raise FailedPrecondition(f"journal {str(p)!r} is corrupt at line {i + 1}") from None
            st.events.append(ev)
            kind = ev.get("ev")
            if kind == "start":  # processing again (e.g. keys wanted now after an obfuscation-only run)
                st.spooled, st.enrolling, st.acked, st.done, st.failed = None, [], {}, None, None
            elif kind == "spooled":
                st.spooled, st.enrolling, st.acked, st.failed = ev, [], {}, None
            elif kind == "enrolling":
                st.enrolling.append(ev)
            elif kind == "acked":
                st.acked.update(zip(ev["tracks"], ev["key_ids"]))
            elif kind == "done":
                st.done, st.failed = ev, None
            elif kind == "failed":
                st.failed = ev
        return st

    # -- spool -------------------------------------------------------------------------------------
    def write_spool(self, digest: str, keys: list[SpooledKey]) -> None:
        """Write the keys atomically (temp file, fsync, rename, fsync folder), readable by the owner only."""
        p = self.spool_path(digest)
        tmp = p.with_name(p.name + ".tmp")
        n = len(keys)
        latents = np.stack([k.latent for k in keys]).astype(np.float32) if n else np.zeros((0, 18, 512), np.float32)
        boxes = np.concatenate([k.boxes for k in keys]).astype(np.int32) if n else np.zeros((0, 5), np.int32)
        meta = [{"track": k.track, "t_start": k.t_start, "t_end": k.t_end, "attributes": k.attributes} for k in keys]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                latents=latents,  # (N, 18, 512) float32
                boxes=boxes,  # (sum M, 5) int32
                box_counts=np.array([len(k.boxes) for k in keys], np.int64),  # (N,)
                meta=np.array(json.dumps(meta)),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        _fsync_dir(self.root)

    def read_spool(self, digest: str) -> list[SpooledKey]:
        p = self.spool_path(digest)
        try:
            with np.load(p, allow_pickle=False) as z:
                latents, boxes, counts = z["latents"], z["boxes"], z["box_counts"]
                meta = json.loads(str(z["meta"]))
        except (OSError, ValueError, KeyError) as e:
            raise FailedPrecondition(f"key spool {str(p)!r} is missing or unreadable: {e}") from e
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return [
            SpooledKey(m["track"], latents[i], boxes[offsets[i] : offsets[i + 1]], m["t_start"], m["t_end"], m["attributes"])
            for i, m in enumerate(meta)
        ]

    def drop_spool(self, digest: str) -> None:
        self.spool_path(digest).unlink(missing_ok=True)

"""Where `facekeys index` enrols keys: an embedded key store directory or a running key store server.

Both expose the same three operations the indexer's journal needs:

* `enroll(batches)`: yields one list of key ids per batch, in order, each once that batch is durable;
* `watermark()`: the store's next key id (key ids only ever grow and are never reused), or None when the
  caller may not ask (a server token without the admin role);
* `find(video_id, want, lo, since)`: {track_id: key_id} for the keys of `video_id` whose track id is in
  `want`, by reading records back (embedded: always; server: needs Stats and Get, i.e. the admin role). With
  a watermark `lo` it reads ids [lo, next); without one (the interrupted attempt could not ask) it reads
  backwards from the newest key until every wanted track is found or keys are older than `since` (Unix time
  the attempt began) minus `CLOCK_SKEW`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from facekeys.errors import FacekeysError, InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from facekeys.records import NewKey

__all__ = ["KeySink", "EmbeddedSink", "ServerSink", "SinkError", "ScanNotAllowed"]


class SinkError(FacekeysError):
    """The key store failed (unreachable, refused, full, ...): not a problem of one video, stops the run."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.code = getattr(cause, "code", "INTERNAL")


class ScanNotAllowed(FacekeysError):
    """The store cannot be read back with these credentials, so an interrupted enrolment cannot be checked."""

    code = "PERMISSION_DENIED"


CLOCK_SKEW = 3600.0  # s: how far the store's clock (created_at) may be behind the indexer's


class KeySink:
    name = "sink"
    max_scan = 200_000  # most key ids `find` reads back before giving up (a busy store since the crash)

    def enroll(self, batches: Sequence[Sequence[NewKey]]) -> Iterator[list[int]]:
        raise NotImplementedError

    def watermark(self) -> int | None:
        raise NotImplementedError

    def get(self, key_id: int):
        raise NotImplementedError

    def close(self) -> None:
        pass

    def find(self, video_id: str, want: set[str], lo: int | None, since: float) -> dict[str, int]:
        hi = self.watermark()
        if hi is None:
            raise ScanNotAllowed(f"{self.name}: these credentials may not read keys back (Stats and Get need the "
                                 "admin role)")
        ids = range(max(1, lo), hi) if lo is not None else range(hi - 1, 0, -1)
        found: dict[str, int] = {}
        for n, key_id in enumerate(ids):
            if len(found) == len(want):
                break
            if n >= self.max_scan:
                raise SinkError(f"{self.name}: read back {n} keys without finding all of an interrupted enrolment's; "
                                f"giving up (max_scan)")
            try:
                rec = self.get(key_id)
            except NotFound:  # deleted since
                continue
            if lo is None and rec.created_at < since - CLOCK_SKEW:
                break
            if rec.where.video_id == video_id and rec.where.track_id in want \
                    and rec.attributes.get("source_digest") == video_id:
                found[rec.where.track_id] = rec.key_id
        return found


class EmbeddedSink(KeySink):
    """A key store directory opened in this process (no server). Do not point it at a served data dir."""

    def __init__(self, path: str | os.PathLike, config=None):
        from facekeys.store import KeyStore, StoreConfig

        self.name = f"store {str(path)!r}"
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.store = KeyStore.open(path, config or StoreConfig())
        except FacekeysError:
            raise
        except Exception as e:  # lmdb.Error (not an OSError), OSError
            raise InvalidArgument(f"cannot open key store {str(path)!r}: {e}") from e

    def enroll(self, batches):
        for b in batches:
            try:
                acks = self.store.enroll(list(b))
            except FacekeysError as e:
                raise SinkError(f"{self.name}: enrol failed: {e}", e) from e
            yield [a.key_id for a in acks]

    def watermark(self) -> int:
        return self.store.stats().next_key_id

    def get(self, key_id: int):
        return self.store.get(key_id)

    def close(self) -> None:
        self.store.close()


class ServerSink(KeySink):
    """A running key store, keys streamed over one EnrollStream per video."""

    def __init__(self, address: str, *, token: str | None = None, tls_ca: bytes | None = None,
                 timeout: float = 60.0, connect_timeout: float = 10.0):
        from facekeys.client import Client

        self.name = f"server {address}"
        self.client = Client(address, timeout=timeout, token=token, tls_ca=tls_ca)
        try:
            self.client.wait_ready(connect_timeout)
        except FacekeysError as e:
            self.client.close()
            raise Unavailable(f"{self.name}: not reachable: {e}") from e
        except Exception as e:  # grpc.FutureTimeoutError
            self.client.close()
            raise Unavailable(f"{self.name}: not reachable within {connect_timeout:g} s ({type(e).__name__})") from e
        self._can_read = True

    def enroll(self, batches):
        try:
            for acks in self.client.enroll_stream([list(b) for b in batches]):
                yield [a.key_id for a in acks]
        except FacekeysError as e:
            raise SinkError(f"{self.name}: enrol failed: {e}", e) from e

    def watermark(self) -> int | None:
        if not self._can_read:
            return None
        try:
            return self.client.stats().next_key_id
        except (PermissionDenied, Unauthenticated):
            self._can_read = False  # a gateway token: enrol only
            return None
        except FacekeysError as e:
            raise SinkError(f"{self.name}: stats failed: {e}", e) from e

    def get(self, key_id: int):
        try:
            return self.client.get(key_id)
        except NotFound:
            raise
        except (PermissionDenied, Unauthenticated) as e:
            raise ScanNotAllowed(f"{self.name}: reading keys back is not allowed for this token ({e})") from e
        except FacekeysError as e:
            raise SinkError(f"{self.name}: reading keys back failed: {e}", e) from e

    def close(self) -> None:
        self.client.close()

"""Where `facekeys index` enrols keys: an embedded key store directory or a running key store server.

Both expose the same three operations the indexer's journal needs:

* `enroll(batches)`: yields one list of key ids per batch, in order, each once that batch is durable;
* `watermark()`: the store's next key id (key ids only ever grow and are never reused), or None when the
  caller may not ask (a server token without the admin role);
* `find(lo, video_id)`: {track_id: key_id} for keys with id >= lo that belong to `video_id`, by reading
  the records back (embedded: always; server: needs Get, i.e. the admin or recovery role).
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


class KeySink:
    name = "sink"
    max_scan = 200_000  # most key ids `find` reads back before giving up (a busy store since the crash)

    def enroll(self, batches: Sequence[Sequence[NewKey]]) -> Iterator[list[int]]:
        raise NotImplementedError

    def watermark(self) -> int | None:
        raise NotImplementedError

    def find(self, lo: int, video_id: str) -> dict[str, int]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _scan(self, lo: int, get) -> Iterator:
        hi = self.watermark()
        if hi is None:
            raise ScanNotAllowed(f"{self.name}: cannot read the next key id back")
        if hi - lo > self.max_scan:
            raise SinkError(f"{self.name}: {hi - lo} keys were enrolled since the interruption; checking more than "
                            f"{self.max_scan} one by one is refused")
        for key_id in range(max(1, lo), hi):
            try:
                yield get(key_id)
            except NotFound:  # deleted since
                continue


def _ours(rec, video_id: str) -> bool:
    return rec.where.video_id == video_id and rec.attributes.get("source_digest") == video_id


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

    def find(self, lo: int, video_id: str) -> dict[str, int]:
        return {r.where.track_id: r.key_id for r in self._scan(lo, self.store.get) if _ours(r, video_id)}

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

    def find(self, lo: int, video_id: str) -> dict[str, int]:
        try:
            return {r.where.track_id: r.key_id for r in self._scan(lo, self.client.get) if _ours(r, video_id)}
        except (PermissionDenied, Unauthenticated) as e:
            raise ScanNotAllowed(f"{self.name}: reading keys back is not allowed for this token ({e})") from e
        except (ScanNotAllowed, SinkError):
            raise
        except FacekeysError as e:
            raise SinkError(f"{self.name}: reading keys back failed: {e}", e) from e

    def close(self) -> None:
        self.client.close()

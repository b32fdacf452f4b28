"""The recovery engine: grant check -> key records (latents) from the key store -> inverse key transform ->
one generator pass per key -> PNGs (Recover) or revealed copies of archived videos (Reveal).

Order of checks, so that a malformed request never consumes a grant: request shape and paths first
(INVALID_ARGUMENT), then the grant (PERMISSION_DENIED; the grant is consumed here, single use), then the
records (NOT_FOUND for an unknown key; PERMISSION_DENIED for a key of another identity than the grant's;
FAILED_PRECONDITION for a key of an encoder this generator does not belong to).
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Protocol

import numpy as np
from PIL import Image

from facekeys.errors import (
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated,
)
from facekeys.records import KeyRecord

from .reveal import PlacementConfig, RevealStats, reveal_video
from .video import OutputVideoConfig

log = logging.getLogger("facekeys.recovery")

NO_GRANT_KEY = ("this recovery service has no grant public key, so it cannot check reveal grants: start it with "
                "--grant-public-key grant.pub (the public half of the key store's --grant-key-file)")
NO_ARCHIVE = ("this recovery service has no video archive: start it with --archive-root DIR --output-root DIR "
              "to reveal videos")
MIN_SIZE, MAX_SIZE = 16, 1024


class KeySource(Protocol):
    """Where the latents come from: `record(key_id)` -> KeyRecord with `.latent` (18, 512) (NotFound if none)."""

    def record(self, key_id: int) -> KeyRecord: ...


class Generator(Protocol):
    """`facekeys.models.FaceGenerator`: latents (B, 18, 512) -> uint8 (B, S, S, 3)."""

    size: int

    def generate(self, latents: np.ndarray, *, output_size: int | None = None) -> np.ndarray: ...


class KeyStoreKeys:
    """Reads records with latents from the key store over gRPC (role `recovery` on a secured store)."""

    def __init__(self, client):
        self._client = client  # facekeys.client.Client

    def record(self, key_id: int) -> KeyRecord:
        try:
            return self._client.get(key_id, include_latent=True)
        except (PermissionDenied, Unauthenticated) as e:
            raise FailedPrecondition(
                f"the key store refused this recovery service's credential ({e}); it needs a token of role "
                "'recovery' (--keystore-token-file)") from None

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class VideoJob:
    video_path: str  # relative to the archive root
    output_path: str = ""  # relative to the output root; "" = derived


@dataclass(frozen=True)
class RevealedVideo:
    video_path: str
    output_path: str
    key_ids: tuple[int, ...]
    stats: RevealStats


def _relative(path: str, what: str) -> PurePosixPath:
    if not path:
        raise InvalidArgument(f"{what} is required")
    if "\x00" in path or "\\" in path:
        raise InvalidArgument(f"{what} {path!r}: NUL or backslash in path")
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts:
        raise InvalidArgument(f"{what} {path!r} must be relative to its root, without '..'")
    return p


def under(root: Path, path: str, what: str) -> Path:
    """`root / path`, resolved (symlinks followed); InvalidArgument if it leaves `root`."""
    full = (root / _relative(path, what)).resolve()
    if not full.is_relative_to(root):
        raise InvalidArgument(f"{what} {path!r} leaves its root")
    return full


def video_matches(video_id: str, rel: PurePosixPath) -> bool:
    """Does a key's Where.video_id name this archived video? Its relative path, file name or stem, or the
    indexer's naming `<stem>-<video_id[:12]>.<ext>` (video_id = sha256 of the source file)."""
    if not video_id:
        return False
    if video_id in (str(rel), rel.name, rel.stem):
        return True
    return len(video_id) >= 12 and rel.stem.endswith("-" + video_id[:12])


class RecoveryEngine:
    def __init__(
        self,
        keys: KeySource,
        generator: Generator,
        *,
        verifier=None,  # facekeys.security.grants.GrantVerifier; None: every call is FAILED_PRECONDITION
        transform=None,  # facekeys.security.transform.KeyTransform; None: keys are stored untransformed
        encoder_ids: Optional[frozenset] = None,  # keys of other encoders are refused; None = any
        archive_root: Optional[Path] = None,
        output_root: Optional[Path] = None,
        placement: PlacementConfig = PlacementConfig(),
        output: OutputVideoConfig = OutputVideoConfig(),
        max_keys: int = 16,
    ):
        if (archive_root is None) != (output_root is None):
            raise InvalidArgument("give both archive_root and output_root, or neither")
        self._keys, self._gen, self._verifier, self._transform = keys, generator, verifier, transform
        self._encoder_ids = encoder_ids
        self._archive = Path(archive_root).resolve() if archive_root is not None else None
        self._out = Path(output_root).resolve() if output_root is not None else None
        for root, what in ((self._archive, "archive root"), (self._out, "output root")):
            if root is not None and not root.is_dir():
                raise InvalidArgument(f"{what} {root} is not a directory")
        if self._archive is not None and (self._out == self._archive or self._out.is_relative_to(self._archive)):
            raise InvalidArgument("the output root must not be inside the archive root (revealed videos would "
                                  "become revealable sources)")
        self.placement, self.output, self.max_keys = placement, output, max_keys
        self._gen_lock = threading.Lock()  # one generator pass at a time (GPU memory / CPU cores)
        self.faces_generated = 0

    # -- shared steps ---------------------------------------------------------------------------------
    def _key_ids(self, key_ids: Sequence[int]) -> list[int]:
        ids = [int(k) for k in key_ids]
        if not ids:
            raise InvalidArgument("key_ids: give at least one key")
        if len(set(ids)) != len(ids):
            raise InvalidArgument("key_ids: duplicates")
        if len(ids) > self.max_keys:
            raise InvalidArgument(f"key_ids: at most {self.max_keys} keys per call, got {len(ids)}")
        return ids

    def _authorize(self, grant: bytes, requester: str, ids: list[int]):
        if self._verifier is None:
            raise FailedPrecondition(NO_GRANT_KEY)
        if not grant:
            raise PermissionDenied("a reveal grant is required: pass ProbeResult.grant of an accepted Match")
        return self._verifier.verify(grant, requester=requester, key_ids=ids)

    def _records(self, ids: list[int], identity_id: str) -> list[KeyRecord]:
        records = [self._keys.record(k) for k in ids]  # NotFound for an unknown key
        for r in records:
            if r.latent is None:
                raise FailedPrecondition(f"key store returned key {r.key_id} without its latent")
            if identity_id and r.identity_id != identity_id:
                raise PermissionDenied(f"key {r.key_id} belongs to another identity than the grant's")
            if self._encoder_ids is not None and r.encoder_id not in self._encoder_ids:
                raise FailedPrecondition(
                    f"key {r.key_id} was encoded by {r.encoder_id!r}; this service's generator belongs to "
                    f"{sorted(self._encoder_ids)} (--accept-encoder-id to add one)")
        return records

    def _generate(self, records: list[KeyRecord], size: Optional[int] = None) -> np.ndarray:
        """One generator pass per key -> (N, S, S, 3) uint8."""
        latents = np.stack([r.latent for r in records]).astype(np.float32)  # (N, 18, 512)
        if self._transform is not None:
            latents = self._transform.inverse(latents)  # stored keys are x Q per layer; the generator wants x
        with self._gen_lock:
            faces = self._gen.generate(latents, output_size=size)  # (N, S, S, 3)
            self.faces_generated += len(records)
        return faces

    # -- Recover --------------------------------------------------------------------------------------
    def recover(self, grant: bytes, requester: str, key_ids: Sequence[int], size: int = 0):
        """-> [(KeyRecord, png bytes)] in key_ids order."""
        ids = self._key_ids(key_ids)
        if size and not MIN_SIZE <= size <= MAX_SIZE:
            raise InvalidArgument(f"size must be 0 (native) or {MIN_SIZE}..{MAX_SIZE}, got {size}")
        g = self._authorize(grant, requester, ids)
        records = self._records(ids, g.identity_id)
        faces = self._generate(records, size or None)
        out = []
        for r, face in zip(records, faces):
            buf = io.BytesIO()
            Image.fromarray(face).save(buf, format="PNG")
            out.append((r, buf.getvalue()))
        return out

    # -- Reveal ---------------------------------------------------------------------------------------
    def _output_path(self, job: VideoJob, rel_src: PurePosixPath) -> tuple[Path, str]:
        suffix = self.output.suffix
        rel = job.output_path or str(rel_src.with_name(
            f"{rel_src.stem}.reveal-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}{suffix}"))
        dst = under(self._out, rel, "output_path")
        if dst.suffix.lower() != suffix:
            raise InvalidArgument(f"output_path {rel!r}: this server writes {self.output.codec} video, name it *{suffix}")
        if dst.exists() or dst.with_name(dst.name + ".partial").exists():
            raise AlreadyExists(f"output_path {rel!r} exists; choose another name")
        return dst, str(dst.relative_to(self._out))

    def reveal(self, grant: bytes, requester: str, key_ids: Sequence[int], jobs: Sequence[VideoJob],
               cancelled: Callable[[], bool] | None = None) -> list[RevealedVideo]:
        if self._archive is None:
            raise FailedPrecondition(NO_ARCHIVE)
        ids = self._key_ids(key_ids)
        if not jobs:
            raise InvalidArgument("videos: give at least one video")
        srcs = []
        for job in jobs:
            src = under(self._archive, job.video_path, "video_path")
            if not src.is_file():
                raise NotFound(f"video_path {job.video_path!r} is not a file in the archive")
            srcs.append((src, PurePosixPath(src.relative_to(self._archive).as_posix())))
        dsts = [self._output_path(job, rel) for job, (_, rel) in zip(jobs, srcs)]
        if len({d for d, _ in dsts}) != len(dsts):
            raise InvalidArgument("two videos would be written to the same output_path")

        g = self._authorize(grant, requester, ids)
        records = self._records(ids, g.identity_id)
        per_video: list[list[KeyRecord]] = [[] for _ in jobs]
        for r in records:
            hit = [i for i, (_, rel) in enumerate(srcs) if video_matches(r.where.video_id, rel)]
            if not hit and not r.where.video_id and len(jobs) == 1:
                hit = [0]
            if not hit:
                raise InvalidArgument(f"key {r.key_id} was recorded in video {r.where.video_id!r}, which is none "
                                      f"of the requested videos")
            for i in hit:
                per_video[i].append(r)
        used = sorted({r.key_id for v in per_video for r in v})
        faces = dict(zip(used, self._generate([next(r for r in records if r.key_id == k) for k in used])))

        out = []
        for job, (src, _), (dst, rel_dst), recs in zip(jobs, srcs, dsts, per_video):
            dst.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            stats = reveal_video(
                src, dst, {r.key_id: faces[r.key_id] for r in recs}, {r.key_id: r.where.boxes for r in recs},
                self.placement, self.output, margins=_margins(recs), cancelled=cancelled)
            log.info("revealed", extra={"video": job.video_path, "output": rel_dst, "keys": [r.key_id for r in recs],
                                        "frames": stats.frames, "boxes": stats.boxes_revealed,
                                        "seconds": round(time.perf_counter() - t0, 3)})
            out.append(RevealedVideo(job.video_path, rel_dst, tuple(r.key_id for r in recs), stats))
        return out


def _margins(records: list[KeyRecord]) -> dict[int, float]:
    """Per-key obfuscation margin from the attribute `obfuscation_margin`, when the indexer recorded it."""
    out = {}
    for r in records:
        raw = r.attributes.get("obfuscation_margin")
        if raw is None:
            continue
        try:
            m = float(raw)
        except ValueError:
            raise FailedPrecondition(f"key {r.key_id}: attribute obfuscation_margin={raw!r} is not a number") from None
        if not 0.0 <= m <= 2.0:
            raise FailedPrecondition(f"key {r.key_id}: obfuscation_margin {m} is outside [0, 2]")
        out[r.key_id] = m
    return out


def load_generator(checkpoint: os.PathLike, device: Optional[str] = None):
    """FaceGenerator from a pSp or rosinality StyleGAN2 file, plus the encoder ids its keys may carry: the pSp
    file's own id (its encoder and decoder were trained together); None (= unknown) for a bare StyleGAN2 file."""
    from facekeys.models import FaceGenerator, encoder_id
    from facekeys.models.checkpoint import _sniff

    gen = FaceGenerator(checkpoint, device=device)
    ids = frozenset({encoder_id(checkpoint)}) if _sniff(checkpoint) == "psp" else None
    return gen, ids

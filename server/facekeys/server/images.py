"""Server-side face encoding: a `FaceImage` message -> one key (18, 512), for image Enroll and Match.

The message carries PNG or JPEG bytes and the face's 5 landmarks (left eye, right eye, nose, mouth left,
mouth right; x, y in the image's stored pixels, EXIF orientation ignored). The image may be
- a face crop or a whole frame: the landmarks say where the face is, in that image's pixels; a `box`
  (x, y, w, h, same pixels) is optional and, when given, must lie in the image and contain the landmarks;
- an FFHQ-aligned 256x256 crop with no landmarks (already aligned by the sender).
The face is aligned (`facekeys.models.align_face`) and encoded by the pSp encoder (`FaceEncoder`, CUDA when
present). Decoding uses Pillow restricted to PNG/JPEG (Pillow ships with the models extra; OpenCV is only
in the indexer's), and the pixel count is checked from the header before any decoding.

Model calls are serialised by a lock: one model instance, and on a CPU host concurrent forward passes
only fight over the same cores. `encode_messages` encodes a list in encoder batches.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from facekeys.errors import FacekeysError, InvalidArgument
from facekeys.v1 import keystore_pb2 as pb

__all__ = ["ImageLimits", "ServerImageEncoder", "decode_image", "aligned_face"]

ALIGNED = 256  # pSp input side; an image of this size with no landmarks is taken as already aligned
N_LANDMARKS = 5
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 32 << 20  # largest encoded image accepted (a 4K PNG frame is ~10-25 MB)
    max_pixels: int = 8192 * 8192  # largest decoded width * height (checked from the header first)
    box_slack: float = 0.5  # landmarks may lie this fraction of the box size outside the box

    def __post_init__(self):
        if self.max_bytes < 1024 or self.max_pixels < ALIGNED * ALIGNED or self.box_slack < 0:
            raise InvalidArgument("ImageLimits: max_bytes >= 1024, max_pixels >= 256*256, box_slack >= 0")


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """PNG/JPEG bytes -> (H, W, 3) uint8 RGB. InvalidArgument for anything else or anything too big."""
    if not data:
        raise InvalidArgument("face image: no encoded bytes")
    if len(data) > limits.max_bytes:
        raise InvalidArgument(f"face image: {len(data)} bytes is more than the limit of {limits.max_bytes}")
    if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
        raise InvalidArgument("face image: not PNG or JPEG (unknown signature)")
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])  # reads the header only
        w, h = img.size
        if w * h > limits.max_pixels:
            raise InvalidArgument(f"face image: {w}x{h} pixels is more than the limit of {limits.max_pixels}")
        img.load()
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    except InvalidArgument:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidArgument(f"face image: cannot decode ({type(e).__name__}: {e})") from None
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise InvalidArgument(f"face image: {rgb.shape[1]}x{rgb.shape[0]} is too small")
    return rgb


def _landmarks(message: pb.FaceImage) -> np.ndarray | None:
    lm = np.asarray(message.landmarks, dtype=np.float64)
    if lm.size == 0:
        return None
    if lm.size != 2 * N_LANDMARKS:
        raise InvalidArgument(f"face image: landmarks must be {N_LANDMARKS} points (10 numbers x1,y1..x5,y5), "
                              f"got {lm.size} numbers")
    if not np.isfinite(lm).all():
        raise InvalidArgument("face image: landmarks must be finite")
    return lm.reshape(N_LANDMARKS, 2)  # (5, 2) x, y


def aligned_face(message: pb.FaceImage, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode, check and align one FaceImage -> (256, 256, 3) uint8 RGB."""
    from facekeys.models.align import align_face  # numpy + Pillow only

    image = decode_image(message.encoded, limits)
    h, w = image.shape[:2]
    lm = _landmarks(message)
    if message.HasField("box"):
        b = message.box
        if b.w <= 0 or b.h <= 0:
            raise InvalidArgument(f"face image: box size must be positive, got {b.w}x{b.h}")
        if b.x < 0 or b.y < 0 or b.x + b.w > w or b.y + b.h > h:
            raise InvalidArgument(f"face image: box ({b.x}, {b.y}, {b.w}, {b.h}) leaves the {w}x{h} image")
        if lm is None:
            raise InvalidArgument("face image: a box needs the face's 5 landmarks (the server runs no detector)")
        sx, sy = limits.box_slack * b.w, limits.box_slack * b.h
        inside = ((lm[:, 0] >= b.x - sx) & (lm[:, 0] <= b.x + b.w + sx)
                  & (lm[:, 1] >= b.y - sy) & (lm[:, 1] <= b.y + b.h + sy))
        if not inside.all():
            raise InvalidArgument("face image: the landmarks lie outside the box (landmarks are in image pixels)")
    if lm is None:
        if (h, w) != (ALIGNED, ALIGNED):
            raise InvalidArgument(f"face image: {N_LANDMARKS} landmarks are required unless the image is an "
                                  f"FFHQ-aligned {ALIGNED}x{ALIGNED} crop (got {w}x{h} and no landmarks)")
        return image
    return align_face(image, lm)  # InvalidArgument for degenerate or off-image landmarks


class ServerImageEncoder:
    """The key store servicer's `ImageEncoder`: FaceImage -> (18, 512) with a pSp `FaceEncoder`."""

    def __init__(self, encoder, limits: ImageLimits = ImageLimits()):
        """`encoder`: `encode(uint8 (B, 256, 256, 3)) -> (B, 18, 512)` and `encoder_id` (a FaceEncoder)."""
        self._encoder = encoder
        self._limits = limits
        self._lock = threading.Lock()
        self.encoder_id: str = encoder.encoder_id  # hashes the checkpoint once, at start-up

    @classmethod
    def load(cls, checkpoint_path: str | os.PathLike, *, device: str | None = None, batch_size: int = 8,
             limits: ImageLimits = ImageLimits()) -> "ServerImageEncoder":
        """Load `psp_ffhq_encode.pt` (checked; CheckpointError, an InvalidArgument, when it does not fit)."""
        from facekeys.models import FaceEncoder  # pulls in torch

        return cls(FaceEncoder(checkpoint_path, device=device, batch_size=batch_size), limits)

    def encode_messages(self, images: Sequence[pb.FaceImage]) -> np.ndarray:
        """FaceImages -> (N, 18, 512) float32; every image is decoded and checked before the model runs."""
        if not images:
            raise InvalidArgument("no face images given")
        faces = np.stack([aligned_face(m, self._limits) for m in images])  # (N, 256, 256, 3) uint8
        with self._lock:
            keys = np.asarray(self._encoder.encode(faces), dtype=np.float32)  # (N, 18, 512)
        if keys.ndim != 3 or keys.shape[0] != len(images) or not np.isfinite(keys).all():
            raise FacekeysError(f"encoder returned {keys.shape} or non-finite values for {len(images)} faces")
        return keys

    def encode_message(self, image: pb.FaceImage) -> np.ndarray:
        """One FaceImage -> (18, 512) float32."""
        return self.encode_messages([image])[0]

"""Image Enroll/Match through a real gRPC key store with `ServerImageEncoder` (facekeys.server.images).

The encoder is a small random-init pSp checkpoint: this proves the plumbing (decode, checks, alignment,
encoding, the servicer's routing, encoder ids), not recognition quality, which needs the real weights.
The no-encoder case (FAILED_PRECONDITION) is tested in test_grpc_service.py.
"""

from __future__ import annotations

import io
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from facekeys.errors import InvalidArgument
from facekeys.server import KeyStoreServer, ServerConfig
from facekeys.server.images import ImageLimits, ServerImageEncoder, aligned_face, decode_image
from facekeys.store import StoreConfig
from facekeys.v1 import keystore_pb2 as pb
from facekeys.v1 import keystore_pb2_grpc as pb_grpc

skimage_data = pytest.importorskip("skimage.data")

# CenterFace (the indexer's default detector) on skimage's astronaut, 512x512: box x, y, w, h and landmarks.
ASTRONAUT_LANDMARKS = np.array([[203.2, 101.7], [247.0, 104.5], [223.3, 125.1], [203.4, 142.3], [241.3, 144.4]])
ASTRONAUT_BOX = (180, 70, 95, 100)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from facekeys.models import save_random_psp_checkpoint

    return save_random_psp_checkpoint(tmp_path_factory.mktemp("ckpt") / "psp_small.pt", seed=3, small=True)


@pytest.fixture(scope="module")
def image_encoder(checkpoint):
    return ServerImageEncoder.load(checkpoint, device="cpu")


@pytest.fixture
def stub(tmp_path, image_encoder):
    cfg = ServerConfig(data_dir=tmp_path / "ks", port=0, metrics_port=-1, store=StoreConfig(map_size=1 << 28))
    srv = KeyStoreServer(cfg, encoder=image_encoder).start()
    channel = grpc.insecure_channel(srv.address)
    yield pb_grpc.KeyStoreStub(channel)
    channel.close()
    srv.stop(grace=0)


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()  # (512, 512, 3) uint8 RGB


def face(image, landmarks=ASTRONAUT_LANDMARKS, box=None) -> pb.FaceImage:
    m = pb.FaceImage(encoded=png(image), landmarks=np.asarray(landmarks, np.float32).ravel().tolist())
    if box is not None:
        m.box.CopyFrom(pb.Box(x=box[0], y=box[1], w=box[2], h=box[3]))
    return m


def status_of(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def test_enroll_by_image_then_match_by_the_same_image(stub, image_encoder, astronaut):
    frame = face(astronaut, box=ASTRONAUT_BOX)  # a whole frame with the face's box and landmarks
    crop = face(astronaut[0:320, 60:400], ASTRONAUT_LANDMARKS - [60, 0])  # a crop, landmarks in its pixels
    enrolled = stub.Enroll(pb.EnrollRequest(keys=[
        pb.KeyInput(identity_id="astronaut", image=frame, where=pb.Where(camera_id="cam1", video_id="v.mp4")),
        pb.KeyInput(identity_id="someone", latent=pb.Tensor(
            data=np.full((18, 512), 0.3, "<f4").tobytes(), shape=[18, 512]), encoder_id=image_encoder.encoder_id),
    ])).keys
    key = enrolled[0].key_id
    record = stub.Get(pb.GetRequest(key_id=key))
    assert record.encoder_id == image_encoder.encoder_id and record.encoder_id.startswith("psp_ffhq_encode:sha256:")

    r = stub.Match(pb.MatchRequest(image=frame, top_k=2, metric=pb.COSINE))
    best = r.results[0].hits[0]
    assert r.results[0].accepted and best.key_id == key and best.identity_id == "astronaut"
    assert best.score == pytest.approx(1.0, abs=1e-5)

    # the same face from a crop holding the whole alignment quad: the same aligned face
    r = stub.Match(pb.MatchRequest(image=crop, encoder_id=image_encoder.encoder_id, metric=pb.COSINE))
    assert r.results[0].hits[0].key_id == key and r.results[0].hits[0].score > 0.99

    # an already aligned 256x256 crop needs no landmarks and gives the same key as the aligned frame
    pre = face(aligned_face(frame), landmarks=[])
    r = stub.Match(pb.MatchRequest(image=pre, metric=pb.COSINE))
    assert r.results[0].hits[0].key_id == key and r.results[0].hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_encode_messages_is_batched_and_matches_single(image_encoder, astronaut):
    one = face(astronaut)
    other = face(astronaut[:, ::-1].copy(), ASTRONAUT_LANDMARKS * [-1, 1] + [511, 0])  # mirrored
    keys = image_encoder.encode_messages([one, other])  # (2, 18, 512)
    assert keys.shape == (2, 18, 512) and keys.dtype == np.float32
    np.testing.assert_allclose(keys[0], image_encoder.encode_message(one), rtol=1e-5, atol=1e-5)


def _truncated_png(image) -> bytes:
    data = png(image)
    return data[: len(data) // 2]


def _bad_crc_png() -> bytes:
    data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    data[29] ^= 0xFF  # inside IHDR's CRC
    return bytes(data)


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="GIF")
    return buf.getvalue()


BAD = {
    "empty bytes": lambda a: pb.FaceImage(encoded=b"", landmarks=ASTRONAUT_LANDMARKS.ravel().tolist()),
    "not an image": lambda a: pb.FaceImage(encoded=b"hello world" * 10, landmarks=[1.0] * 10),
    "gif": lambda a: pb.FaceImage(encoded=_gif(), landmarks=[1.0] * 10),
    "truncated png": lambda a: pb.FaceImage(encoded=_truncated_png(a), landmarks=ASTRONAUT_LANDMARKS.ravel().tolist()),
    "png magic then garbage": lambda a: pb.FaceImage(encoded=b"\x89PNG\r\n\x1a\n" + zlib.compress(b"x" * 99)),
    "jpeg magic then garbage": lambda a: pb.FaceImage(encoded=b"\xff\xd8\xff" + b"\x00" * 64, landmarks=[1.0] * 10),
    "4 landmarks": lambda a: face(a, ASTRONAUT_LANDMARKS[:4]),
    "11 numbers": lambda a: pb.FaceImage(encoded=png(a), landmarks=[100.0] * 11),
    "nan landmark": lambda a: face(a, np.where(np.eye(5, 2, dtype=bool), np.nan, ASTRONAUT_LANDMARKS)),
    "inf landmark": lambda a: face(a, ASTRONAUT_LANDMARKS + np.array([[np.inf, 0]] + [[0, 0]] * 4)),
    "degenerate landmarks": lambda a: face(a, np.full((5, 2), 200.0)),
    "face off the image": lambda a: face(a, ASTRONAUT_LANDMARKS + 5000),
    "no landmarks, not aligned": lambda a: face(a, landmarks=[]),
    "box leaves the image": lambda a: face(a, box=(480, 70, 95, 100)),
    "box of zero size": lambda a: face(a, box=(180, 70, 0, 100)),
    "landmarks outside the box": lambda a: face(a, box=(0, 300, 60, 60)),
    "box without landmarks": lambda a: face(a, landmarks=[], box=ASTRONAUT_BOX),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_images_are_invalid_argument(stub, astronaut, case):
    msg = BAD[case](astronaut)
    code, details = status_of(lambda: stub.Match(pb.MatchRequest(image=msg)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("face image") or "landmarks" in details, details
    code, _ = status_of(lambda: stub.Enroll(pb.EnrollRequest(keys=[pb.KeyInput(image=msg)])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_other_encoder_id_is_invalid_argument(stub, astronaut):
    code, details = status_of(lambda: stub.Match(pb.MatchRequest(encoder_id="psp_ffhq_encode:sha256:0", image=face(astronaut))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "differs" in details


def test_limits_are_checked_before_decoding(astronaut):
    data = png(astronaut)
    with pytest.raises(InvalidArgument, match="bytes is more than"):
        decode_image(data, ImageLimits(max_bytes=1024))
    with pytest.raises(InvalidArgument, match="pixels is more than"):
        decode_image(data, ImageLimits(max_pixels=300 * 300))
    jpeg = io.BytesIO()
    Image.fromarray(astronaut).convert("L").save(jpeg, format="JPEG")
    gray = decode_image(jpeg.getvalue())
    assert gray.shape == (512, 512, 3) and gray.dtype == np.uint8  # grey JPEG comes back as RGB

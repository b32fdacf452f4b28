import numpy as np
import pytest

from facekeys.errors import InvalidArgument
from facekeys.indexer import keys_for_tracks, obfuscate_video
from indexer_media import FacePath, render, write_video


class FakeEncoder:
    """Stands in for facekeys.models.FaceEncoder: checks the input contract, returns a fixed-shape key."""

    def __init__(self, shape=(18, 512)):
        self.shape, self.seen = shape, None

    def encode(self, images):
        assert images.dtype == np.uint8 and images.shape[1:] == (256, 256, 3)
        self.seen = images
        return np.stack([np.full(self.shape, float(im.mean()), np.float32) for im in images])


def test_keys_for_tracks(tmp_path, centerface):
    pytest.importorskip("facekeys.models.align")
    frames, _ = render(12, (320, 240), [FacePath(), FacePath(head="second", x0=200, x1=180, y0=100, y1=90)])
    write_video(tmp_path / "in.mp4", frames)
    tracks = obfuscate_video(tmp_path / "in.mp4", tmp_path / "out.mp4", centerface)
    assert len(tracks) == 2
    enc = FakeEncoder()
    keys = keys_for_tracks(tracks, enc)
    assert keys.shape == (2, 18, 512) and keys.dtype == np.float32
    assert enc.seen.std() > 10  # real aligned face pixels, not an empty canvas
    assert keys_for_tracks([], enc).shape == (0, 18, 512)
    with pytest.raises(InvalidArgument):
        keys_for_tracks(tracks, FakeEncoder(shape=(18, 256)))

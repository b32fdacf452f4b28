"""RecoveryEngine without gRPC: key transform inversion, encoder ids, video matching, path checks, config and
the command line. Small random-init generator (plumbing only)."""

from __future__ import annotations

import io
from pathlib import PurePosixPath

import numpy as np
import pytest
from fkhelpers import random_keys
from PIL import Image

from facekeys.errors import FailedPrecondition, InvalidArgument, NotFound
from facekeys.records import KeyRecord, Obfuscation, Where
from facekeys.recovery.engine import RecoveryEngine, under, video_matches
from facekeys.security.grants import GrantVerifier


class FakeKeys:
    def __init__(self, records):
        self.records = {r.key_id: r for r in records}

    def record(self, key_id):
        if key_id not in self.records:
            raise NotFound(f"key {key_id} not found")
        return self.records[key_id]


def rec(key_id, latent, identity="A", encoder="enc", video=""):
    return KeyRecord(key_id=key_id, identity_id=identity, encoder_id=encoder, where=Where(video_id=video),
                     obfuscation=Obfuscation("mosaic", 6.0), attributes={}, created_at=0.0, latent=latent)


def test_recover_inverts_the_key_transform(generator, grant_keys, signer):
    from facekeys.security.transform import KeyTransform

    x = random_keys(1, seed=2)  # (1, 18, 512) the encoder's key
    t = KeyTransform(b"deployment-secret-0123456789")
    stored = t.forward(x)[0]  # what the key store holds
    verifier = GrantVerifier.from_file(grant_keys[1])
    engine = RecoveryEngine(FakeKeys([rec(1, stored)]), generator, verifier=verifier, transform=t)
    ((record, png),) = engine.recover(signer.sign([1], "A", "me"), "me", [1], size=32)
    got = np.asarray(Image.open(io.BytesIO(png)))
    want = generator.generate(x, output_size=32)[0]
    assert np.abs(got.astype(int) - want).max() <= 1  # float64 round trip of the orthogonal transform
    assert np.abs(stored - x[0]).mean() > 0.1  # the stored key is not the generator's latent


def test_keys_of_another_encoder_are_refused(generator, grant_keys, signer):
    verifier = GrantVerifier.from_file(grant_keys[1])
    engine = RecoveryEngine(FakeKeys([rec(1, random_keys(1)[0], encoder="other")]), generator, verifier=verifier,
                            encoder_ids=frozenset({"psp_ffhq_encode:sha256:abc"}))
    with pytest.raises(FailedPrecondition, match="--accept-encoder-id"):
        engine.recover(signer.sign([1], "A", "me"), "me", [1], size=32)
    assert engine.faces_generated == 0


def test_video_matching():
    rel = PurePosixPath("cam1/lobby-0800-0123456789ab.mp4")
    for vid in ("cam1/lobby-0800-0123456789ab.mp4", "lobby-0800-0123456789ab.mp4", "lobby-0800-0123456789ab",
                "0123456789ab" + "f" * 52):
        assert video_matches(vid, rel), vid
    for vid in ("", "0123456789ac" + "f" * 52, "lobby", "0123456789ab"[:11]):
        assert not video_matches(vid, rel), vid


def test_paths_stay_under_their_root(tmp_path):
    root = tmp_path.resolve()
    assert under(root, "a/b.mp4", "p") == root / "a" / "b.mp4"
    for bad in ("", "/abs.mp4", "../x", "a/../../x", "a\\b.mp4", "a\x00b"):
        with pytest.raises(InvalidArgument):
            under(root, bad, "p")


def test_roots_are_checked(tmp_path, generator):
    keys = FakeKeys([])
    with pytest.raises(InvalidArgument, match="both"):
        RecoveryEngine(keys, generator, archive_root=tmp_path)
    with pytest.raises(InvalidArgument, match="not a directory"):
        RecoveryEngine(keys, generator, archive_root=tmp_path / "no", output_root=tmp_path)
    (tmp_path / "archive" / "out").mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="inside the archive"):
        RecoveryEngine(keys, generator, archive_root=tmp_path / "archive", output_root=tmp_path / "archive" / "out")


def test_config_and_command_line(tmp_path, grant_keys, capsys):
    from facekeys.cli import main
    from facekeys.recovery import RecoveryConfig
    from facekeys.security.config import SecurityConfig

    with pytest.raises(InvalidArgument, match="public key"):
        RecoveryConfig(security=SecurityConfig(grant_key_file=grant_keys[0]))
    with pytest.raises(InvalidArgument, match="--output-root"):
        RecoveryConfig(archive_root=tmp_path)
    with pytest.raises(InvalidArgument, match="without TLS"):
        RecoveryConfig(host="0.0.0.0")
    assert main(["recover-serve", "--checkpoint", str(tmp_path / "missing.pt"), "--port", "0",
                 "--metrics-port", "-1"]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["recover-serve", "--checkpoint", "x.pt", "--archive-root", str(tmp_path)]) == 1
    assert "--output-root" in capsys.readouterr().err

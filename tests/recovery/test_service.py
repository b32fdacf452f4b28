"""The recovery service over real gRPC, reading latents from a real key store (insecure, loopback):
Recover PNGs, Reveal of one identity in an archived video, and every refusal's status code.

Small random-init pSp generator: plumbing only (the faces are textures; quality needs the real weights).
Grants are signed in the test with the key store's signer (`GrantSigner`), as its Match would."""

from __future__ import annotations

import io
import os
import time
import urllib.request

import grpc
import numpy as np
import pytest
from fkhelpers import random_keys
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from facekeys.client import Client
from facekeys.records import NewKey, Where
from facekeys.recovery import RecoveryConfig, RecoveryServer
from facekeys.recovery.reveal import PlacementConfig, region
from facekeys.recovery.video import OutputVideoConfig
from facekeys.security.grants import GrantSigner
from facekeys.v1 import recovery_pb2 as pb
from facekeys.v1 import recovery_pb2_grpc as pb_grpc

VIDEO_ID = "0123456789ab" + "cd" * 26  # sha256-like id of the source; the archived name ends -0123456789ab


@pytest.fixture
def keystore(server_factory, vid):
    """A key store with identity A (one track in the test video), B (another track there) and C (elsewhere)."""
    srv = server_factory("ks")
    x = random_keys(3, seed=11)
    with Client(srv.address) as c:
        enrolled = c.enroll([
            NewKey(x[0], "enc", "A", Where("cam1", VIDEO_ID, "t1", 1.0, 2.0, vid.boxes_a())),
            NewKey(x[1], "enc", "B", Where("cam1", VIDEO_ID, "t2", 1.0, 2.0, vid.boxes_b())),
            NewKey(x[2], "enc", "C", Where("cam2", "other-video", "t3", 1.0, 2.0, vid.boxes_b())),
        ])
    return srv, {e.identity_id: e.key_id for e in enrolled}, x


@pytest.fixture
def roots(tmp_path, source_video):
    archive, out = tmp_path / "archive", tmp_path / "revealed"
    (archive / "cam1").mkdir(parents=True)
    out.mkdir()
    os.link(source_video, archive / "cam1" / source_video.name)
    return archive, out


@pytest.fixture
def recovery(keystore, roots, grant_keys, generator):
    started = []

    def make(**cfg):
        cfg.setdefault("keystore", keystore[0].address)
        cfg.setdefault("grant_public_key", grant_keys[1])
        cfg.setdefault("archive_root", roots[0])
        cfg.setdefault("output_root", roots[1])
        srv = RecoveryServer(RecoveryConfig(port=0, metrics_port=0, **cfg),
                             generator=generator).start()
        started.append(srv)
        channel = grpc.insecure_channel(srv.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        started.append(channel)
        return srv, pb_grpc.RecoveryStub(channel)

    yield make
    for s in started:
        s.close() if isinstance(s, grpc.Channel) else s.stop(grace=0)


def status_of(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def video_path(source_video):
    return f"cam1/{source_video.name}"


def test_recover_returns_the_generated_faces_at_the_requested_size(keystore, recovery, signer, generator):
    _, ids, x = keystore
    srv, stub = recovery()
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(srv.address))
    assert health.Check(health_pb2.HealthCheckRequest(service="facekeys.v1.Recovery")).status == 1  # SERVING

    grant = signer.sign([ids["A"]], "A", "anonymous")  # no auth: the caller is "anonymous"
    r = stub.Recover(pb.RecoverRequest(grant=grant, key_ids=[ids["A"]], size=64))
    assert [f.key_id for f in r.faces] == [ids["A"]] and r.faces[0].identity_id == "A"
    img = np.asarray(Image.open(io.BytesIO(r.faces[0].png)))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, generator.generate(x[:1], output_size=64)[0])  # the key's own face

    code, details = status_of(lambda: stub.Recover(pb.RecoverRequest(grant=grant, key_ids=[ids["A"]], size=64)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "already used" in details  # replayed

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics").read().decode()
    assert 'facekeys_requests_total{code="OK",method="Recover"} 1.0' in metrics
    assert 'facekeys_requests_total{code="PERMISSION_DENIED",method="Recover"} 1.0' in metrics
    assert 'facekeys_recovery_faces_generated_total{rpc="recover"} 1.0' in metrics


def test_reveal_changes_only_the_granted_identitys_regions(keystore, recovery, roots, signer, source_video, vid):
    _, ids, _ = keystore
    _, stub = recovery()
    grant = signer.sign([ids["A"]], "A", "anonymous")
    t0 = time.perf_counter()
    r = stub.Reveal(pb.RevealRequest(grant=grant, key_ids=[ids["A"]], videos=[
        pb.RevealVideo(video_path=video_path(source_video), output_path="case-17/a.mp4")]))
    seconds = time.perf_counter() - t0
    (v,) = r.videos
    assert (v.output_path, list(v.key_ids), v.frames, v.frames_changed, v.boxes_revealed, v.boxes_skipped) == (
        "case-17/a.mp4", [ids["A"]], 12, 11, 11, 1)
    src, src_pts, src_tb, n_audio_src, _ = vid.read(source_video)
    got, pts, tb, n_audio, audio = vid.read(roots[1] / "case-17" / "a.mp4")
    assert [p * tb for p in pts] == [p * src_tb for p in src_pts] and audio == "aac" and n_audio == n_audio_src
    a, m = vid.boxes_a(), PlacementConfig().margin
    for f, (s, g) in enumerate(zip(src, got)):
        inside = np.zeros(s.shape[:2], bool)
        for row in a[a[:, 0] == f]:
            x0, y0, x1, y1 = region(row, m, vid.W, vid.H)
            inside[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(g[~inside], s[~inside])  # B's face and everything else: untouched
        assert not inside.any() or (g[inside] != s[inside]).any(-1).mean() > 0.8
    print(f"reveal over gRPC, 12 frames 160x120, 1 key (small generator): {seconds:.2f} s")


def test_reveal_with_a_derived_output_name_and_an_existing_output(keystore, recovery, roots, signer, source_video):
    _, ids, _ = keystore
    _, stub = recovery(output=OutputVideoConfig("ffv1"))
    (roots[1] / "taken.mkv").write_bytes(b"x")
    grant = signer.sign([ids["A"]], "A", "anonymous")
    req = pb.RevealRequest(grant=grant, key_ids=[ids["A"]], videos=[pb.RevealVideo(video_path=video_path(source_video),
                                                                                  output_path="taken.mkv")])
    code, _ = status_of(lambda: stub.Reveal(req))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    req.videos[0].output_path = "wrong-suffix.mp4"
    code, details = status_of(lambda: stub.Reveal(req))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and ".mkv" in details
    req.videos[0].output_path = ""  # derived; the grant was not consumed by the refusals above
    (v,) = stub.Reveal(req).videos
    assert v.output_path.startswith("cam1/cam1-0800-0123456789ab.reveal-") and v.output_path.endswith(".mkv")
    assert (roots[1] / v.output_path).is_file() and v.boxes_revealed == 11


def test_grant_refusals_are_permission_denied(keystore, recovery, signer, grant_keys, source_video):
    _, ids, _ = keystore
    _, stub = recovery()
    evil = GrantSigner.from_file(grant_keys[2])
    good = signer.sign([ids["A"]], "A", "anonymous")
    body, sig = good.split(b".")
    tampered = body[:-2] + (b"A" if body[-2:-1] != b"A" else b"B") + body[-1:] + b"." + sig
    cases = {
        "missing": (b"", [ids["A"]]),
        "forged (another signing key)": (evil.sign([ids["A"]], "A", "anonymous"), [ids["A"]]),
        "altered": (tampered, [ids["A"]]),
        "malformed": (b"not-a-grant", [ids["A"]]),
        "expired": (signer.sign([ids["A"]], "A", "anonymous", now=time.time() - 3600), [ids["A"]]),
        "another requester": (signer.sign([ids["A"]], "A", "mallory"), [ids["A"]]),
        "widened (key not in grant)": (signer.sign([ids["A"]], "A", "anonymous"), [ids["A"], ids["B"]]),
        "key of another identity": (signer.sign([ids["B"]], "A", "anonymous"), [ids["B"]]),
    }
    for name, (grant, keys) in cases.items():
        code, details = status_of(lambda: stub.Recover(pb.RecoverRequest(grant=grant, key_ids=keys, size=32)))
        assert code == grpc.StatusCode.PERMISSION_DENIED, (name, details)
        code, details = status_of(lambda: stub.Reveal(pb.RevealRequest(
            grant=grant, key_ids=keys, videos=[pb.RevealVideo(video_path=video_path(source_video))])))
        assert code == grpc.StatusCode.PERMISSION_DENIED, (name, details)


def test_bad_requests(keystore, recovery, roots, signer, source_video, tmp_path):
    _, ids, _ = keystore
    _, stub = recovery()
    (roots[0] / "escape.mp4").symlink_to(source_video)  # a link out of the archive
    grant = signer.sign([ids["A"], ids["C"], 999], "", "anonymous")

    def reveal(path, keys=(ids["A"],), out=""):
        return status_of(lambda: stub.Reveal(pb.RevealRequest(grant=grant, key_ids=list(keys), videos=[
            pb.RevealVideo(video_path=path, output_path=out)])))

    for path in ("../x.mp4", "/etc/passwd", "cam1/../../x.mp4", "escape.mp4", ""):
        code, details = reveal(path)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, details)
    for out in ("../out.mp4", "/tmp/out.mp4"):
        code, _ = reveal(video_path(source_video), out=out)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert reveal("cam1/missing.mp4")[0] == grpc.StatusCode.NOT_FOUND
    code, details = status_of(lambda: stub.Recover(pb.RecoverRequest(grant=grant, key_ids=[ids["A"]], size=5000)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "size" in details
    code, _ = status_of(lambda: stub.Recover(pb.RecoverRequest(grant=grant, key_ids=[])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # none of the above consumed the grant; these do (one each), in order:
    code, details = status_of(lambda: stub.Recover(pb.RecoverRequest(grant=grant, key_ids=[999])))
    assert code == grpc.StatusCode.NOT_FOUND, details  # unknown key
    grant = signer.sign([ids["A"], ids["C"], 999], "", "anonymous")
    code, details = reveal(video_path(source_video), keys=(ids["C"],))  # C was recorded in another video
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "other-video" in details


def test_without_grant_key_or_archive_it_is_failed_precondition(keystore, recovery, signer, source_video):
    _, ids, _ = keystore
    _, stub = recovery(grant_public_key=None)
    grant = signer.sign([ids["A"]], "A", "anonymous")
    code, details = status_of(lambda: stub.Recover(pb.RecoverRequest(grant=grant, key_ids=[ids["A"]])))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "--grant-public-key" in details
    _, stub = recovery(archive_root=None, output_root=None)
    code, details = status_of(lambda: stub.Reveal(pb.RevealRequest(grant=grant, key_ids=[ids["A"]], videos=[
        pb.RevealVideo(video_path=video_path(source_video))])))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "--archive-root" in details


def test_authenticated_service_uses_the_callers_name_and_audits(keystore, recovery, signer, tmp_path):
    from facekeys.security.audit import read, verify
    from facekeys.security.config import SecurityConfig
    from facekeys.security.credentials import CredentialStore

    _, ids, _ = keystore
    creds = CredentialStore(tmp_path / "creds.json")
    _, alice = creds.issue("alice", ["revealer"])
    _, ivan = creds.issue("ivan", ["investigator"])
    (tmp_path / "audit.key").write_bytes(b"k" * 32)
    sec = SecurityConfig(credentials_file=tmp_path / "creds.json", audit_log=tmp_path / "audit.log",
                         audit_key_file=tmp_path / "audit.key")
    srv, stub = recovery(security=sec)

    def recover(token, grant, keys):
        md = [("authorization", f"Bearer {token}")] if token else None
        return status_of(lambda: stub.Recover(pb.RecoverRequest(grant=grant, key_ids=keys, size=32), metadata=md))

    assert recover(None, b"", [ids["A"]])[0] == grpc.StatusCode.UNAUTHENTICATED
    assert recover(ivan, signer.sign([ids["A"]], "A", "ivan"), [ids["A"]])[0] == grpc.StatusCode.PERMISSION_DENIED
    code, details = recover(alice, signer.sign([ids["A"]], "A", "anonymous"), [ids["A"]])
    assert code == grpc.StatusCode.PERMISSION_DENIED and "another requester" in details
    code, _ = recover(alice, signer.sign([999], "", "alice"), [999])  # passes auth and grant; no such key
    assert code == grpc.StatusCode.NOT_FOUND
    srv.stop(grace=0)
    assert verify(tmp_path / "audit.log", b"k" * 32).ok
    records = list(read(tmp_path / "audit.log"))
    assert [(r["who"], r["action"], r["decision"].split(":")[0]) for r in records] == [("alice", "Recover", "refused")]


def test_grant_from_a_real_match(server_factory, recovery, grant_keys, vid):
    """The key store signs the grant in Match (--grant-key-file); the recovery service accepts exactly it."""
    from facekeys.security.config import SecurityConfig

    ks = server_factory("ks-grants", security=SecurityConfig(grant_key_file=grant_keys[0]))
    x = random_keys(2, seed=4)
    with Client(ks.address) as c:
        a, b = c.enroll([NewKey(x[0], "enc", "A", Where("cam1", VIDEO_ID, "t1", 1, 2, vid.boxes_a())),
                         NewKey(x[1], "enc", "B", Where("cam1", VIDEO_ID, "t2", 1, 2, vid.boxes_b()))])
        result, grants = c.match_with_grants(x[0], "enc", "all", top_k=2)
    assert result.results[0].accepted and grants[0]
    _, stub = recovery(keystore=ks.address)
    code, _ = status_of(lambda: stub.Recover(pb.RecoverRequest(grant=grants[0], key_ids=[b.key_id], size=32)))
    assert code == grpc.StatusCode.PERMISSION_DENIED  # B's key is not in A's grant
    r = stub.Recover(pb.RecoverRequest(grant=grants[0], key_ids=[a.key_id], size=32))
    assert r.faces[0].identity_id == "A"


def test_cli_match_grant_recover_reveal(server_factory, recovery, roots, grant_keys, source_video, vid, tmp_path):
    """An investigator's path with the `facekeys` command: match -> grant file -> recover -> reveal."""
    import json
    import subprocess
    import sys

    from facekeys.security.config import SecurityConfig

    ks = server_factory("ks-cli", security=SecurityConfig(grant_key_file=grant_keys[0]))
    x = random_keys(2, seed=5)
    with Client(ks.address) as c:
        a, _ = c.enroll([NewKey(x[0], "enc", "A", Where("cam1", VIDEO_ID, "t1", 1, 2, vid.boxes_a())),
                         NewKey(x[1], "enc", "B", Where("cam1", VIDEO_ID, "t2", 1, 2, vid.boxes_b()))])
    srv, _ = recovery(keystore=ks.address)
    np.save(tmp_path / "probe.npy", x[0] + 0.01)

    def fk(*args):
        p = subprocess.run([sys.executable, "-m", "facekeys.cli", *map(str, args)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        return [json.loads(line) for line in p.stdout.splitlines()]

    def grant():  # grants are single-use: one Match per recovery call
        [m] = fk("match", tmp_path / "probe.npy", "--server", ks.address, "--encoder-id", "enc", "--layers", "all",
                 "--grant-out", tmp_path / "grant")
        assert m["decision"] == "accepted" and m["hits"][0]["key_id"] == a.key_id
        return tmp_path / "grant"

    [face] = fk("recover", "--server", srv.address, "--grant-file", grant(), "--key", a.key_id, "--size", 48,
                "--out-dir", tmp_path / "faces")
    assert face["identity_id"] == "A" and Image.open(face["png"]).size == (48, 48)
    [v] = fk("reveal", "--server", srv.address, "--grant-file", grant(), "--key", a.key_id,
             "--video", f"{video_path(source_video)}=cli/a.mp4")
    assert v["output_path"] == "cli/a.mp4" and v["boxes_revealed"] == 11 and (roots[1] / "cli" / "a.mp4").exists()
    p = subprocess.run([sys.executable, "-m", "facekeys.cli", "reveal", "--server", srv.address, "--grant-file",
                        str(tmp_path / "grant"), "--key", str(a.key_id), "--video", video_path(source_video)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith("facekeys: error:") and "already used" in p.stderr

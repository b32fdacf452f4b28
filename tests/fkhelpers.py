"""Helpers shared by tests (importable as `fkhelpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np

from facekeys.dims import DIM, N_LAYERS
from facekeys.records import Hit, NewKey, Where
from facekeys.store.vectors import KeyAttrs


def random_keys(n: int, seed: int = 0) -> np.ndarray:
    """(n, 18, 512) float32 latents around a shared mean, like pSp keys."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((N_LAYERS, DIM)).astype(np.float32)
    return (mean + 0.7 * rng.standard_normal((n, N_LAYERS, DIM))).astype(np.float32)


def make_tls(directory, client_names=()):
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and client certificates (PEM files).
    Returns a dict of paths: ca, server_cert, server_key, and <name>_cert / <name>_key per client."""
    import datetime
    import ipaddress
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("facekeys test CA")).issuer_name(name("facekeys test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(cn, server):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1)))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return key, cert

    for cn, server in [("server", True)] + [(c, False) for c in client_names]:
        key, cert = issue(cn if not server else "localhost", server)
        out[f"{cn}_cert"] = d / f"{cn}.crt"
        out[f"{cn}_key"] = d / f"{cn}.key"
        out[f"{cn}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, out[f"{cn}_key"])
    return out


# -- exact-search oracle (store tests) --------------------------------------------------------------
def oracle(gallery: np.ndarray, probe: np.ndarray, layers, metric: str) -> np.ndarray:
    """Scores of one probe (18, 512) against gallery (N, 18, 512) on the concatenation of `layers`."""
    x = gallery[:, list(layers), :].astype(np.float64).reshape(len(gallery), -1)
    q = probe[list(layers), :].astype(np.float64).ravel()
    if metric == "l2":
        return np.linalg.norm(x - q, axis=1)
    return (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))


def assert_topk_matches_oracle(hits, scores_by_key: dict, k: int, metric: str, tol: float = 1e-6):
    """Tie-aware: returned scores are the oracle's scores of those keys, in order, and they are the k best
    oracle values (any key strictly better than the k-th returned score must be among the hits)."""
    sign = -1.0 if metric == "cosine" else 1.0
    ordered = sorted(scores_by_key.values(), key=lambda s: sign * s)
    expect = ordered[:k]
    got_scores = [h.score for h in hits]
    assert len(hits) == min(k, len(scores_by_key))
    for h in hits:
        assert abs(h.score - scores_by_key[h.key_id]) <= tol + tol * abs(scores_by_key[h.key_id])
    np.testing.assert_allclose(got_scores, expect, atol=tol, rtol=tol)
    kth = got_scores[-1]
    must = {kid for kid, s in scores_by_key.items() if sign * s < sign * kth - tol}
    assert must <= {h.key_id for h in hits}


def enrol(store, gallery, identities=None, cameras=None, times=None):
    keys = [
        NewKey(g, "enc", identity_id=(identities[i] if identities else f"id{i}"),
               where=Where(cameras[i] if cameras else "cam", "vid", str(i),
                           *(times[i] if times else (0.0, 0.0))))
        for i, g in enumerate(gallery)
    ]
    return [k.key_id for k in store.enroll(keys)]


def f16(x: np.ndarray) -> np.ndarray:
    """What the index stores: float16 values (as float32)."""
    return x.astype(np.float16).astype(np.float32)


def attrs(n: int, seed: int = 0) -> list[KeyAttrs]:
    rng = np.random.default_rng(seed)
    return [KeyAttrs(f"p{rng.integers(0, 500)}", f"cam{rng.integers(0, 4)}", float(t), float(t) + 5.0)
            for t in rng.uniform(0, 1000, n)]


def check_exact(result, gallery16, ids, probes, layers, metric, k, admitted=None):
    """Tie-aware: the hits are the k best of the admitted keys with their exact scores."""
    for i, probe in enumerate(probes):
        s = oracle(gallery16, probe, layers, metric)
        scores = {int(kid): float(v) for kid, v, ok in zip(ids, s, admitted if admitted is not None else [True] * len(ids))
                  if ok}
        hits = [Hit(int(kid), "", float(v), "", "", "", 0.0, 0.0) for kid, v in zip(result.ids[i], result.scores[i])]
        assert_topk_matches_oracle(hits, scores, k, metric, tol=1e-9)


def start_server(data_dir, *extra):
    """`facekeys serve` in a subprocess on a free loopback port: (process, address)."""
    from facekeys.bench.serve import start_serve

    return start_serve(data_dir, *extra)

"""Helpers shared by tests (importable as `fkhelpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np

from facekeys.dims import DIM, N_LAYERS


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

"""kill -9 in the middle of an enrol stream loses no acknowledged key; indexes equal LMDB after restart."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from fkhelpers import random_keys, start_server

from facekeys.client import Client
from facekeys.errors import FacekeysError, NotFound
from facekeys.records import NewKey


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_acknowledged_key(tmp_path):
    latents = random_keys(3000, seed=42)
    batches = [[NewKey(v, "enc", f"id{i + j}") for j, v in enumerate(latents[i:i + 20])]
               for i in range(0, len(latents), 20)]
    proc, address = start_server(tmp_path / "data")
    acked: list = []
    try:
        client = Client(address)
        stream = client.open_stream()

        def feed():
            try:
                for b in batches:
                    stream.send(b)
            finally:
                stream.close()

        threading.Thread(target=feed, daemon=True).start()
        with pytest.raises(FacekeysError):  # the stream breaks when the server dies
            for acks in stream.acks():
                acked.extend(acks)
                if len(acked) >= 600:
                    os.kill(proc.pid, signal.SIGKILL)
        client.close()
    finally:
        proc.kill()
        proc.wait()
    assert 600 <= len(acked) < len(latents)

    proc, address = start_server(tmp_path / "data")
    try:
        with Client(address) as c:
            stats = c.stats()
            assert stats.keys >= len(acked)  # batches committed but not yet acked may also be there
            for k in acked:  # every acknowledged key is in LMDB and in the index
                row = int(k.identity_id[2:])
                rec = c.get(k.key_id, include_latent=True)
                np.testing.assert_array_equal(rec.latent, latents[row])
            probes = np.stack([latents[int(k.identity_id[2:])] for k in acked[::25]])
            r = c.match(probes, "enc", "all", "l2", top_k=1)
            assert [p.hits[0].key_id for p in r.results] == [k.key_id for k in acked[::25]]
            # the index holds exactly what LMDB holds: every stored id is gettable and found by itself
            present = []
            for key_id in range(1, stats.next_key_id):
                try:
                    present.append(c.get(key_id, include_latent=True))
                except NotFound:
                    pass
            assert len(present) == stats.keys and stats.keys % 20 == 0  # whole batches only
            sample = present[:: max(1, len(present) // 40)]
            r = c.match(np.stack([p.latent for p in sample]), "enc", "all", "l2", top_k=1)
            assert [p.hits[0].key_id for p in r.results] == [p.key_id for p in sample]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # graceful shutdown on SIGTERM

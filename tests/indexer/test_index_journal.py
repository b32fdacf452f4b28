"""The indexer's journal: replay rules, torn lines, the lock, the key spool."""

import json
import os

import numpy as np
import pytest

from facekeys.errors import FailedPrecondition, InvalidArgument
from facekeys.indexer.journal import Journal, SpooledKey, file_digest

D = "ab" * 32


def test_replay_and_statuses(tmp_path):
    with Journal(tmp_path / "j") as j:
        assert j.state(D).status == "new"
        j.append(D, "start", path="x", camera_id="c")
        j.append(D, "failed", reason="boom")
        assert j.state(D).status == "failed"
        j.append(D, "start", path="x", camera_id="c")
        j.append(D, "spooled", tracks=[0, 3, 5], output="o.mp4", frames=9, with_keys=True, face_tracks=3)
        j.append(D, "enrolling", watermark=7)
        j.append(D, "acked", tracks=[0, 3], key_ids=[7, 8])
        j.append(D, "failed", reason="store full")  # after spooled: resume at enrolment, not from scratch
        st = j.state(D)
        assert st.status == "spooled" and st.unconfirmed == [5] and st.acked == {0: 7, 3: 8}
        assert [e["watermark"] for e in st.enrolling] == [7]
        j.append(D, "done", keys=3, output="o.mp4", with_keys=True)
        assert j.state(D).status == "done"
        j.append(D, "start", path="x", camera_id="c")  # re-processing forgets the old outcome
        st = j.state(D)
        assert st.status == "new" and st.spooled is None and st.done is None


def test_torn_last_line_is_ignored_a_torn_middle_is_not(tmp_path):
    with Journal(tmp_path) as j:
        j.append(D, "start", path="x", camera_id="c")
        j.append(D, "spooled", tracks=[], output="o", frames=1, with_keys=False, face_tracks=0)
        p = tmp_path / f"{D}.jsonl"
        with open(p, "a") as f:
            f.write('{"ev":"done","ke')  # crash mid-write
        assert j.state(D).status == "spooled"
        with open(p, "a") as f:
            f.write('\n{"ev":"failed","reason":"x"}\n')
        with pytest.raises(FailedPrecondition, match="corrupt at line 3"):
            j.state(D)


def test_one_indexer_per_journal(tmp_path):
    with Journal(tmp_path):
        with pytest.raises(FailedPrecondition, match="in use"):
            Journal(tmp_path)
    Journal(tmp_path).close()  # released


def test_spool_round_trip_is_private(tmp_path):
    rng = np.random.default_rng(0)
    keys = [SpooledKey(4, rng.standard_normal((18, 512)).astype(np.float32), np.array([[1, 2, 3, 4, 5], [2, 3, 4, 5, 6]]),
                       10.0, 10.04, {"track": "4"}),
            SpooledKey(9, rng.standard_normal((18, 512)).astype(np.float32), np.array([[7, 1, 1, 9, 9]]), 11.0, 11.0, {})]
    with Journal(tmp_path) as j:
        j.write_spool(D, keys)
        assert os.stat(j.spool_path(D)).st_mode & 0o777 == 0o600
        back = j.read_spool(D)
        assert [k.track for k in back] == [4, 9] and back[0].attributes == {"track": "4"}
        for a, b in zip(keys, back):
            np.testing.assert_array_equal(a.latent, b.latent)
            np.testing.assert_array_equal(a.boxes, b.boxes)
            assert (a.t_start, a.t_end) == (b.t_start, b.t_end)
        j.drop_spool(D)
        with pytest.raises(FailedPrecondition, match="spool"):
            j.read_spool(D)
        with pytest.raises(InvalidArgument):
            j.append("../../etc/passwd", "start")


def test_digest_is_cached_by_path_size_mtime(tmp_path):
    f = tmp_path / "v.bin"
    f.write_bytes(b"abc")
    with Journal(tmp_path / "j") as j:
        assert j.digest(f) == file_digest(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    rows = [json.loads(x) for x in (tmp_path / "j" / "digests.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    with Journal(tmp_path / "j") as j:
        j.digest(f)
        f.write_bytes(b"abcd")
        assert j.digest(f) == file_digest(f)
    assert len((tmp_path / "j" / "digests.jsonl").read_text().splitlines()) == 2


def test_sink_find_reads_back_only_what_it_must(tmp_path):
    import time

    from facekeys.indexer.sinks import CLOCK_SKEW, EmbeddedSink
    from facekeys.records import NewKey, Where
    from facekeys.store import StoreConfig

    vid = "cd" * 32
    rng = np.random.default_rng(0)

    def key(video, track):
        return NewKey(rng.standard_normal((18, 512)).astype(np.float32), "enc",
                      where=Where("c", video, f"{video}:{track}"), attributes={"source_digest": video})

    sink = EmbeddedSink(tmp_path / "s", StoreConfig(map_size=1 << 28))
    try:
        list(sink.enroll([[key("other", i) for i in range(5)]]))
        lo, t0 = sink.watermark(), time.time()
        (ours,) = sink.enroll([[key(vid, 0), key(vid, 1)]])
        list(sink.enroll([[key("other", i) for i in range(5, 8)]]))
        reads = []
        get = sink.get
        sink.get = lambda k: reads.append(k) or get(k)
        want = {f"{vid}:0", f"{vid}:1"}
        assert sink.find(vid, want, lo, t0) == {f"{vid}:0": ours[0], f"{vid}:1": ours[1]}
        assert reads == [6, 7]  # forward from the watermark, stops once both are found
        reads.clear()
        assert sink.find(vid, want, None, t0) == {f"{vid}:0": ours[0], f"{vid}:1": ours[1]}
        assert reads == [10, 9, 8, 7, 6]  # backwards from the newest
        reads.clear()
        assert sink.find(vid, {f"{vid}:9"}, None, time.time() + 2 * CLOCK_SKEW) == {}
        assert reads == [10]  # older than the attempt: stop
    finally:
        sink.close()

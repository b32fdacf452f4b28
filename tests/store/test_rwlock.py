"""The index read/write lock: readers share it, a writer has it alone, and a waiting writer holds new readers
back (so a stream of searches cannot starve an enrol)."""

import threading
import time

from facekeys.store.rwlock import RWLock


def _start(fn):
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_readers_share_writer_excludes_and_waiting_writer_holds_new_readers_back():
    lock = RWLock()
    events = []
    first_in, release_first = threading.Event(), threading.Event()

    def reader(name, inside=None, until=None):
        def run():
            with lock.read():
                events.append(f"{name} in")
                if inside:
                    inside.set()
                if until:
                    until.wait(5)
            events.append(f"{name} out")
        return run

    def writer():
        with lock.write():
            events.append("writer in")
        events.append("writer out")

    r1 = _start(reader("r1", first_in, release_first))
    assert first_in.wait(5)
    second_in = threading.Event()
    r2 = _start(reader("r2", second_in))  # a second reader shares the lock with the first
    assert second_in.wait(5)
    r2.join(5)
    w = _start(writer)
    time.sleep(0.1)
    assert "writer in" not in events  # the first reader still holds it
    r3 = _start(reader("r3"))
    time.sleep(0.1)
    assert "r3 in" not in events  # behind the waiting writer
    release_first.set()
    for t in (r1, w, r3):
        t.join(5)
    assert events.index("r1 out") < events.index("writer in") < events.index("writer out") < events.index("r3 in")


def test_nested_and_reused_sides():
    """The side objects are shared: nesting reads in one thread and reusing them many times keeps the count
    right (a writer gets in afterwards)."""
    lock = RWLock()
    with lock.read():
        with lock.read():
            pass
    for _ in range(100):
        with lock.read():
            pass
    done = threading.Event()

    def write():
        with lock.write():
            done.set()

    _start(write).join(5)
    assert done.is_set()

"""A small readers-writer lock: many concurrent searches, exclusive index mutation. Writers waiting hold new
readers back, so a stream of searches cannot starve an enrol."""

import threading


class RWLock:
    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._read = _Side(self._acquire_read, self._release_read)
        self._write = _Side(self._acquire_write, self._release_write)

    def read(self):
        """`with lock.read():` shared with other readers."""
        return self._read

    def write(self):
        """`with lock.write():` exclusive."""
        return self._write

    def _acquire_read(self):
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def _release_read(self):
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def _acquire_write(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True

    def _release_write(self):
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Side:
    """`with` support for one side of the lock. Plain methods, not a generator-based context manager: a search
    takes the lock on every call, and the generator costs a few microseconds more each time."""

    __slots__ = ("_acquire", "_release")

    def __init__(self, acquire, release):
        self._acquire = acquire
        self._release = release

    def __enter__(self):
        self._acquire()
        return self

    def __exit__(self, *exc):
        self._release()
        return False

"""Decode slots handed out first come, first served.

A semaphore lets whoever asks at the moment a slot frees take it, so under load an upload that has waited for
a while can lose to one that just arrived, again and again, until DECODE_WAIT runs out and it gets 503 (seen
with gevent's semaphore at 64 clients). Here a freed slot goes straight to the longest waiter.
"""
from __future__ import annotations

import threading
from collections import deque


class FairSlots:
    def __init__(self, count: int) -> None:
        self._free = self._count = count
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, timeout: float) -> bool:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        try:
            if turn.wait(timeout):
                return True
        except BaseException:  # killed while waiting (GreenletExit, a Timeout): pass on a slot it was handed
            with self._lock:
                if not turn.is_set():
                    self._waiters.remove(turn)
                    raise
            self.release()
            raise
        with self._lock:
            if turn.is_set():  # handed over between the timeout and the lock
                return True
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # the slot passes on without ever being free
            elif self._free < self._count:
                self._free += 1
            else:
                raise ValueError("a decode slot released more times than it was taken")

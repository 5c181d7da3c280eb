"""A result survives a read whose reply is lost: the connection is cut after Redis ran the read and before its
answer came back (a network that drops it, CLIENT KILL, a failover). redis-py sends the read again on a new
connection; that second read must still find the result."""
import socket
import threading
import time

import pytest

from conftest import free_port
from imgq.jobs import connection, keys
from imgq.jobs.results import ResultWaiter, Watch


class CutOnce:
    """A TCP proxy to Redis that passes everything, except that the first reply to a command naming `verb`
    never reaches the client: Redis has run the command, and the client's connection is closed instead."""

    def __init__(self, upstream_port: int, verb: bytes) -> None:
        self.upstream_port, self.verb = upstream_port, verb
        self.armed, self.cuts = True, 0
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress; close() alone would not
        except OSError:
            pass
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            cut = threading.Event()
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if self.armed and self.verb in data.upper():
                    self.armed = False
                    cut.set()  # before Redis can answer
                server.sendall(data)
        except OSError:
            pass  # _down closed both

    def _down(self, server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if cut.is_set():
                    self.cuts += 1
                    break
                client.sendall(data)
        finally:
            for sock in (client, server):
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # close() alone would wait for the other thread's recv()
                except OSError:
                    pass  # already closed by its peer
                sock.close()


@pytest.mark.parametrize("watched", [False, True], ids=["read alone", "read with the epoch"])
def test_a_result_whose_read_reply_was_cut_is_read_again(redis_server, watched):
    """Both ways a request reads: alone, and pipelined with the queue's epoch (a request that watches for a
    job lost in a Redis restart, as /predict's do)."""
    proxy = CutOnce(redis_server.port, b"GETEX")
    try:
        client = connection.connect(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=5)
        admin = redis_server.client()
        key = keys.result("cut-read", "cutread")
        admin.set(key, b'{"predictions": []}', ex=60)

        waiter = ResultWaiter(client, prefix="cutread", notifications=False, poll_interval=0.05)
        watch = Watch(None, b"", None, waiter.generation) if watched else None  # type: ignore[arg-type]
        event = threading.Event()
        event.set()  # read at once, as a notification would make it
        value = waiter.wait("cut-read", event, deadline=time.monotonic() + 3, watch=watch)

        assert proxy.cuts == 1, "the proxy never cut a read's reply"
        assert value == b'{"predictions": []}'
        # Read, the result is kept only for the grace a resent read needs, not for RESULT_TTL.
        assert 0 < admin.pttl(key) <= waiter.read_grace_ms < 60_000
    finally:
        proxy.close()

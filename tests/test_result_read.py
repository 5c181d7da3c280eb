"""A result survives a read whose reply is lost: the connection is cut after Redis ran the read and before its
answer came back (a network that drops it, CLIENT KILL, a failover). redis-py sends the read again on a new
connection; that second read must still find the result."""
import socket
import threading
import time

from conftest import free_port
from imgq.jobs import connection, keys
from imgq.jobs.results import READ_GRACE_MS, ResultWaiter


class CutOnce:
    """A TCP proxy to Redis that passes everything, except that the first reply to a command naming `verb`
    never reaches the client: Redis has run the command, and the client's connection is closed instead."""

    def __init__(self, upstream_port: int, verb: bytes) -> None:
        self.upstream_port, self.verb = upstream_port, verb
        self.armed, self.cuts = True, 0
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
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


def test_a_result_whose_read_reply_was_cut_is_read_again(redis_server):
    proxy = CutOnce(redis_server.port, b"GETEX")
    client = connection.connect(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=5)
    admin = redis_server.client()
    key = keys.result("cut-read", "cutread")
    admin.set(key, b'{"predictions": []}', ex=60)

    waiter = ResultWaiter(client, prefix="cutread", notifications=False, poll_interval=0.05)
    event = threading.Event()
    event.set()  # read at once, as a notification would make it
    value = waiter.wait("cut-read", event, deadline=time.monotonic() + 3)

    assert proxy.cuts == 1, "the proxy never cut a read's reply"
    assert value == b'{"predictions": []}'
    # Read, the result is kept only for the grace a resent read needs, not for RESULT_TTL.
    assert 0 < admin.pttl(key) <= READ_GRACE_MS

"""A request whose job vanished with Redis' data learns it within seconds (503 + Retry-After, "send it again"),
not at REQUEST_TIMEOUT (504); a request whose job survived a restart (Redis loaded it back) waits on and is
answered; a job whose take ran in Redis but whose answer never reached the worker is put back and answered.
Real redis-server, real gunicorn; no worker while the jobs wait, so they sit on the queue."""
import os
import socket
import threading
import time

import pytest
import requests

from conftest import grey_png, standin_label, wait_until

REQUEST_TIMEOUT = 30


def send_waiting(url, count):
    """`count` requests in threads; returns (outcomes list filled as they end: (status, json, ended_at), threads)."""
    outcomes = []

    def one(level):
        r = requests.post(url + "/predict", files={"image": ("g.png", grey_png(level))}, timeout=REQUEST_TIMEOUT + 30)
        outcomes.append((level, r.status_code, r.json(), r.headers.get("Retry-After"), time.monotonic()))

    threads = [threading.Thread(target=one, args=(level,)) for level in range(count)]
    for t in threads:
        t.start()
    return outcomes, threads


@pytest.mark.parametrize("notifications", ["1", "0"])
def test_requests_whose_jobs_vanished_with_a_restarted_redis_end_503_within_seconds(service, notifications):
    server = service.use_own_redis()
    url, web = service.start_web(REQUEST_TIMEOUT=REQUEST_TIMEOUT, NOTIFICATIONS=notifications)
    outcomes, threads = send_waiting(url, 20)
    queue = f"{service.prefix}:queue"
    wait_until(lambda: server.client().llen(queue) == 20, timeout=30)

    server.stop()  # no persistence: the queue goes with it
    server.start()
    up_at = time.monotonic()
    for t in threads:
        t.join(REQUEST_TIMEOUT + 30)

    assert len(outcomes) == 20
    assert {status for _, status, _, _, _ in outcomes} == {503}, outcomes
    # Each ended soon after Redis was back (those that polled while it was down got 503 at once), far from
    # the 30 s timeout.
    assert max(ended for *_, ended in outcomes) - up_at < 10
    lost = [body for _, _, body, _, _ in outcomes if "lost when Redis restarted" in body["error"]]
    assert lost, [body for _, _, body, _, _ in outcomes]
    assert all(retry for _, _, _, retry, _ in outcomes)
    assert "request.job_lost" in web.log_text()


def test_jobs_that_a_restarted_redis_loaded_back_are_still_answered(service):
    server = service.use_own_redis()
    url, web = service.start_web(REQUEST_TIMEOUT=REQUEST_TIMEOUT)
    outcomes, threads = send_waiting(url, 10)
    client = server.client()
    queue = f"{service.prefix}:queue"
    wait_until(lambda: client.llen(queue) == 10, timeout=30)

    client.save()  # a snapshot: the restarted Redis loads the queue back
    server.stop()
    server.start()
    assert server.client().llen(queue) == 10
    wait_until(lambda: "listener.subscribed" in web.log_text().split("listener.disconnected")[-1], timeout=30)
    service.start_worker()
    for t in threads:
        t.join(REQUEST_TIMEOUT + 30)
    os.remove(os.path.join(server.workdir, "dump.rdb"))

    assert sorted((level, status) for level, status, *_ in outcomes) == [(level, 200) for level in range(10)]
    assert all(body["predictions"][0]["label"] == standin_label(level) for level, _, body, _, _ in outcomes)
    assert "request.job_lost" not in web.log_text()
    assert "request.job_found" not in web.log_text()  # found at the first look, not after the grace


class CuttingProxy:
    """A TCP proxy in front of Redis that, once armed, cuts the first connection whose blocking take (BLMOVE)
    is answered with a job: the job has moved in Redis, and its answer never reaches the worker."""

    def __init__(self, redis_port):
        self.redis_port = redis_port
        self.armed, self.cut = threading.Event(), threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.redis_port))
            taking = [False]
            threading.Thread(target=self._pipe, args=(client, upstream, taking, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, taking, False), daemon=True).start()

    def _pipe(self, src, dst, taking, to_redis):
        try:
            while data := src.recv(1 << 16):
                if to_redis:
                    taking[0] = b"BLMOVE" in data
                elif self.armed.is_set() and taking[0] and data[:1] == b"$" and not data.startswith(b"$-1") \
                        and not self.cut.is_set():
                    self.cut.set()
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def test_a_take_whose_answer_is_lost_puts_the_job_back_and_it_is_answered(service):
    proxy = CuttingProxy(service.redis_port)
    worker = service.start_worker(REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0")
    url, _ = service.start_web(REQUEST_TIMEOUT="20")
    proxy.armed.set()
    answer = requests.post(url + "/predict", files={"image": ("g.png", grey_png(33))}, timeout=60)
    assert proxy.cut.is_set()  # the take did move the job, and the worker never heard it
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] == standin_label(33)
    assert "worker.returned" in worker.log_text()

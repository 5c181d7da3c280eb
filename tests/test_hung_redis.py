"""A hung Redis, a slow Redis and a restarted Redis, as the web server's clients see them.

Where it sits: the request path's Redis calls (jobqueue push, /healthz's status script) use the short
REDIS_SOCKET_TIMEOUT; the result wait (results.ResultWaiter: GETEX, the notification listener) uses its own
longer timeout and retries; the worker beats at once when its connection to Redis is new again. A hung Redis
is a SIGSTOPped redis-server: TCP connects (the kernel accepts), nothing answers.
"""
import concurrent.futures
import os
import signal
import time

import requests

from conftest import standin_label, wait_until
from conftest import post_grey as post

PASSWORD = "hunter2-not-for-clients"






def answered_200(url, level):
    try:
        return post(url, level, timeout=30).status_code == 200
    except requests.RequestException:
        return False


def test_hung_redis_answers_503_fast_without_connection_details_then_recovers(service):
    server = service.use_own_redis("--requirepass", PASSWORD)
    service.start_worker()
    url, web = service.start_web()
    assert post(url, 7).status_code == 200
    pid = server.proc.popen.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = post(url, 8, timeout=30)
        took_predict = time.monotonic() - started
        started = time.monotonic()
        health = requests.get(url + "/healthz", timeout=30)
        took_health = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    # REDIS_SOCKET_TIMEOUT is 1 s: each answers in about 1 s (bounds loose for a busy machine; ~10 s before).
    assert response.status_code == 503 and response.headers.get("Retry-After"), response.text
    assert "not answering" in response.json()["error"]
    assert took_predict < 5, took_predict
    assert health.status_code == 503 and took_health < 5, (health.text, took_health)
    body = health.json()
    assert body["ok"] is False and body["redis"].startswith("down: not answering")
    for secret in (PASSWORD, str(server.port), "127.0.0.1", "redis://"):
        assert secret not in health.text and secret not in response.text
    # Redis answers again: so does the service, by itself.
    wait_until(lambda: answered_200(url, 9), timeout=60)
    assert post(url, 10).json()["predictions"][0]["label"] == standin_label(10)
    assert "Traceback" not in web.log_text()


def test_redis_down_healthz_names_no_host_or_port(service):
    server = service.use_own_redis("--requirepass", PASSWORD)
    url, _ = service.start_web()
    server.stop()
    health = requests.get(url + "/healthz", timeout=30)
    assert health.status_code == 503 and health.json()["redis"] == "down: unreachable", health.text
    for secret in (PASSWORD, str(server.port), "127.0.0.1"):
        assert secret not in health.text
    server.start()


def test_slow_redis_does_not_turn_waiting_requests_into_503(service):
    """Redis stalls 2.5 s (a long script) while four requests wait for their results: they wait longer,
    and all get their answers. Their result reads time out (REDIS_WAIT_TIMEOUT=1 here) and are retried."""
    server = service.use_own_redis()
    worker = service.start_worker(STANDIN_LATENCY_MS=6000, BATCH_SIZE=4)  # answers after the stall
    # Reads every 0.2 s even while the listener hears, so that some meet the stall.
    url, web = service.start_web(REDIS_WAIT_TIMEOUT=1, POLL_INTERVAL=0.2, BACKUP_POLL_S=0.2)
    client = server.client()
    inflight = f"{service.prefix}:inflight:"
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {pool.submit(post, url, level): level for level in (21, 22, 23, 24)}
        # All four pushed, and the worker inside its 6 s model call with the first of them.
        wait_until(lambda: web.log_text().count("job.pushed") == 4, timeout=60)
        wait_until(lambda: sum(client.llen(k) for k in client.keys(inflight + "*")) >= 1, timeout=60)
        stall = "local t0 = redis.call('TIME') local s = t0[1] * 1e6 + t0[2] " \
                "repeat local t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > tonumber(ARGV[1]) return 1"
        client.eval(stall, 0, 2_500_000)
        for future, level in futures.items():
            answer = future.result()
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["label"] == standin_label(level)
    assert "result.read_slow" in web.log_text()  # the wait did meet the stall, and rode it out
    assert worker.popen.poll() is None


def test_healthz_counts_the_worker_right_after_a_redis_restart(service):
    """The worker's heartbeat is rare here (every 60 s): readiness must not wait for it after a restart."""
    server = service.use_own_redis()
    service.start_worker(HEARTBEAT_INTERVAL=60, HEARTBEAT_TTL=180)
    url, _ = service.start_web()
    assert requests.get(url + "/healthz", timeout=10).json()["live_workers"] == 1
    server.stop()  # an empty Redis comes back: no registration, no heartbeat
    server.start()
    wait_until(lambda: answered_200(url, 30), timeout=60)
    restarted = time.monotonic()
    health = wait_until(lambda: (lambda r: r if r.status_code == 200 else None)(
        requests.get(url + "/healthz", timeout=10)), timeout=20)
    assert health.json()["live_workers"] == 1 and health.json()["ok"] is True
    assert time.monotonic() - restarted < 20  # the next regular beat would be up to 60 s away

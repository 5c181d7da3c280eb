"""GET /livez and GET /readyz against real processes: live whatever Redis does; ready only while Redis answers
and a worker is alive."""
import time

import requests


def wait_for(url, status, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(url, timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_live_always_ready_only_with_redis_and_a_worker(service):
    server = service.use_own_redis()
    url, _ = service.start_web()
    assert requests.get(url + "/livez", timeout=5).json() == {"live": True}
    not_ready = requests.get(url + "/readyz", timeout=5)
    assert not_ready.status_code == 503 and not_ready.json()["error"] == "no live model worker"

    worker = service.start_worker()
    ready = wait_for(url + "/readyz", 200)
    assert ready.status_code == 200 and ready.json() == {"ready": True, "redis": "ok", "live_workers": 1}

    server.stop()  # Redis gone: not ready, fast, but still live (an orchestrator must not restart us for it)
    started = time.monotonic()
    down = requests.get(url + "/readyz", timeout=10)
    assert down.status_code == 503 and "Redis" in down.json()["error"] and time.monotonic() - started < 5
    assert requests.get(url + "/livez", timeout=5).status_code == 200
    server.start()
    assert wait_for(url + "/readyz", 200).status_code == 200  # the worker registers again by itself

    worker.stop()  # a clean exit unregisters at once
    assert wait_for(url + "/readyz", 503).status_code == 503

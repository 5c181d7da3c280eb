"""The service end to end over HTTP: web servers, Redis and workers as real processes."""
import collections
import concurrent.futures
import os
import re
import sys
import time

import pytest
import requests

from conftest import CASTLE, free_port, grey_png, keys_left, standin_label


def post_image(url, data, name="image.png", timeout=60):
    return requests.post(url + "/predict", files={"image": (name, data)}, timeout=timeout)


def test_castle_round_trip_in_the_course_shape(service):
    if not os.path.exists(CASTLE):
        pytest.skip(f"{CASTLE} not found")
    service.start_worker()
    url, _ = service.start_web()
    with open(CASTLE, "rb") as f:
        response = post_image(url, f.read(), "castle_image.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert len(body["predictions"]) == 5
    assert all(set(p) == {"label", "probability"} for p in body["predictions"])
    probabilities = [p["probability"] for p in body["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert body["model"] == "standin"

    health = requests.get(url + "/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json()["live_workers"] == 1 and health.json()["redis"] == "ok"
    # The result was read; only the live worker's registration, heartbeat and model record remain.
    # (Counters, {prefix}:stats:*, outlive every process by design: metrics.py; the epoch expires when pushes stop.)
    assert [k.split(":")[1] for k in keys_left(service) if ":stats:" not in k and not k.endswith(":epoch")] == \
        ["heartbeat", "worker_models", "workers"]


def test_castle_through_the_real_classifier(service):
    """The whole path with the real model: upload → job → Redis → EfficientNet-Lite0 → result → response."""
    if not os.path.exists(CASTLE):
        pytest.skip(f"{CASTLE} not found")
    service.start_worker(MODEL="efficientnet_lite0", BATCH_SIZE=4)
    url, _ = service.start_web(MODEL="efficientnet_lite0")
    with open(CASTLE, "rb") as f:
        response = post_image(url, f.read(), "castle_image.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "efficientnet_lite0"
    assert body["predictions"][0]["label"] == "castle" and body["predictions"][0]["probability"] > 0.8


def test_worker_without_its_weights_says_so_in_one_line(service):
    worker = service.start_worker(wait=False, MODEL="resnet50", RESNET50_WEIGHTS="/nonexistent/weights.h5")
    assert worker.popen.wait(120) == 2  # a setting-like refusal: restarting cannot fix it
    output = worker.log_text().strip().splitlines()
    assert "Traceback" not in worker.log_text()
    assert "RESNET50_WEIGHTS" in output[-1] and "MODEL=efficientnet_lite0" in output[-1]


def test_two_web_servers_two_workers_200_concurrent_requests(service):
    workers = [service.start_worker(BATCH_SIZE=8), service.start_worker(BATCH_SIZE=8)]
    urls = [service.start_web()[0], service.start_web()[0]]
    levels = list(range(200))

    def one(level):
        return level, post_image(urls[level % 2], grey_png(level))

    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        answers = list(pool.map(one, levels))

    for level, response in answers:
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == standin_label(level)
    ids = [response.json()["id"] for _, response in answers]
    assert len(set(ids)) == 200

    # Every job ran exactly once, on one worker or the other, and both workers took a share.
    done = collections.Counter()
    per_worker = []
    for worker in workers:
        found = re.findall(r"job\.done .*?id=(\w+)", worker.log_text())
        per_worker.append(len(found))
        done.update(found)
    assert set(done) == set(ids) and set(done.values()) == {1}
    assert all(n > 0 for n in per_worker), per_worker

    assert service.redis_server.client().llen(f"{service.prefix}:queue") == 0
    for worker in workers:
        assert worker.stop() == 0
    # Results were read; workers unregistered on exit; only the counters (stats) stay, and the epoch
    # until it expires (2 x REQUEST_TIMEOUT + 10 s after the last push).
    assert [k for k in keys_left(service) if ":stats:" not in k and not k.endswith(":epoch")] == []


@pytest.mark.parametrize("how", ["config refused", "notifications off"])
def test_requests_complete_by_polling_without_notifications(service, how):
    if how == "config refused":  # like a managed Redis that does not allow CONFIG
        service.use_own_redis("--rename-command", "CONFIG", "")
        env = {}
    else:
        env = {"NOTIFICATIONS": "0"}
    service.start_worker()
    url, web = service.start_web(POLL_INTERVAL="0.2", **env)
    for level in (3, 30, 130):
        response = post_image(url, grey_png(level))
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == standin_label(level)
    if how == "config refused":
        assert "notifications.unavailable" in web.log_text()
    else:
        assert "off (polling" in requests.get(url + "/healthz", timeout=5).json()["notifications"]


def test_redis_outage_answers_503_then_recovers_without_restarts(service):
    server = service.use_own_redis()
    service.start_worker()
    url, _ = service.start_web()
    assert post_image(url, grey_png(7)).status_code == 200

    server.stop()
    started = time.monotonic()
    response = post_image(url, grey_png(8))
    assert response.status_code == 503, response.text
    assert time.monotonic() - started < 3
    assert "Redis" in response.json()["error"]
    assert requests.get(url + "/healthz", timeout=5).status_code == 503

    server.start()
    deadline = time.monotonic() + 20
    while requests.get(url + "/healthz", timeout=5).status_code != 200:  # worker re-registers by itself
        assert time.monotonic() < deadline, "worker did not come back after Redis returned"
        time.sleep(0.2)
    response = post_image(url, grey_png(9))
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == standin_label(9)


def test_no_worker_means_504_after_request_timeout_and_nothing_left(service):
    url, _ = service.start_web(REQUEST_TIMEOUT="1")
    started = time.monotonic()
    response = post_image(url, grey_png(1))
    assert response.status_code == 504
    assert "REQUEST_TIMEOUT" in response.json()["error"]
    assert 1 <= time.monotonic() - started < 10  # loose: a busy machine
    assert [k for k in service.keys() if not k.endswith(":epoch")] == []  # the job was taken back off the queue
    assert requests.get(url + "/healthz", timeout=5).status_code == 503


def test_metrics_add_up_over_web_processes(service):
    service.start_worker()
    url, _ = service.start_web(processes=2)
    for level in range(6):
        assert post_image(url, grey_png(level)).status_code == 200
    assert post_image(url, b"").status_code == 400
    text = requests.get(url + "/metrics", timeout=5).text
    assert 'predict_requests_total{status="200"} 6.0' in text
    assert 'predict_requests_total{status="400"} 1.0' in text


def test_course_style_flask_server_still_works(service):
    """`python run_web_server.py`, the course's shell 3, serves the same API as gunicorn does."""
    service.start_worker()
    port = free_port()
    web = service.start("flask", [sys.executable, "run_web_server.py"], {"PORT": port})
    web.wait_for_log("web.start")
    deadline = time.monotonic() + 20
    while True:
        try:
            response = requests.post(f"http://127.0.0.1:{port}/predict",
                                     files={"image": ("g.png", grey_png(64))}, timeout=30)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert response.status_code == 200 and response.json()["predictions"][0]["label"] == standin_label(64)


def test_web_server_enables_only_the_notifications_it_needs_at_start(service):
    server = service.use_own_redis()
    client = server.client()
    client.config_set("notify-keyspace-events", "Ex")  # someone else's flags: kept
    service.start_web()
    deadline = time.monotonic() + 10
    while set(client.config_get("notify-keyspace-events")["notify-keyspace-events"]) != set("KEx$"):
        assert time.monotonic() < deadline, client.config_get("notify-keyspace-events")
        time.sleep(0.05)

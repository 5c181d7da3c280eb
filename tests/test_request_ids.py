"""Request ids (imgq/web/app.py) and the serving model in /healthz (imgq/jobs/workers.py), against real processes.

Every answer carries an id, in the X-Request-ID header and in the JSON field "id", errors included; the web
log has `request.received` and `request.done status=...` lines with that id; for /predict the worker's
lines have it too. /healthz names the model each live worker serves, not the MODEL setting.
"""
import re
import time

import requests

from conftest import grey_png, wait_until, worker_id

ID = re.compile(r"[0-9a-f]{32}")


def log_lines(proc, request_id, timeout=10):
    """The log lines that mention request_id, once request.done is among them (logged after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in proc.log_text().splitlines() if f"id={request_id}" in line]
        if any(" request.done " in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_a_rejected_upload_and_a_missing_field_are_logged_with_their_id(service):
    url, web = service.start_web()
    for files, status in (({"image": ("notes.txt", b"not an image")}, 400), ({"photo": ("a.png", b"x")}, 400)):
        response = requests.post(url + "/predict", files=files, timeout=10)
        assert response.status_code == status
        body = response.json()
        assert body["success"] is False and ID.fullmatch(body["id"])
        assert response.headers["X-Request-ID"] == body["id"]
        lines = log_lines(web, body["id"])
        assert any(" request.received " in line and "path=/predict" in line for line in lines), lines
        assert any(" request.done " in line and f"status={status}" in line for line in lines), lines


def test_every_error_answer_has_the_id_even_outside_predict(service):
    url, web = service.start_web()
    response = requests.get(url + "/no-such-page", timeout=10)
    assert response.status_code == 404
    assert response.json()["id"] == response.headers["X-Request-ID"]
    assert any("status=404" in line for line in log_lines(web, response.json()["id"]))


def test_a_classified_request_has_one_id_from_web_to_worker(service):
    worker = service.start_worker()
    url, web = service.start_web()
    response = requests.post(url + "/predict", files={"image": ("g.png", grey_png(40))}, timeout=60)
    assert response.status_code == 200, response.text
    request_id = response.json()["id"]
    assert ID.fullmatch(request_id) and response.headers["X-Request-ID"] == request_id
    done = [line for line in log_lines(web, request_id) if " request.done " in line]
    assert len(done) == 1 and "status=200" in done[0] and "model=standin" in done[0]
    assert any(" job.done " in line for line in worker.log_text().splitlines() if f"id={request_id}" in line)


def test_a_sane_incoming_request_id_is_kept_and_a_bad_one_replaced(service):
    service.start_worker()
    url, web = service.start_web()
    files = {"image": ("g.png", grey_png(41))}
    kept = requests.post(url + "/predict", files=files, headers={"X-Request-ID": "client-7.abc_1"}, timeout=60)
    assert kept.status_code == 200
    assert kept.json()["id"] == kept.headers["X-Request-ID"] == "client-7.abc_1"
    # Two requests with the same id each get their own answer (the job ids differ).
    again = requests.post(url + "/predict", files={"image": ("g.png", grey_png(42))},
                          headers={"X-Request-ID": "client-7.abc_1"}, timeout=60)
    assert again.json()["predictions"][0] != kept.json()["predictions"][0]
    bad = requests.post(url + "/predict", files={}, headers={"X-Request-ID": "x\ty; rm -rf /" + "a" * 200},
                        timeout=10)
    assert bad.status_code == 400 and ID.fullmatch(bad.json()["id"])


def test_healthz_names_the_model_each_live_worker_serves(service):
    url, _ = service.start_web()
    body = requests.get(url + "/healthz", timeout=10).json()
    assert body["live_workers"] == 0 and body["workers"] == [] and body["model"] is None
    worker = service.start_worker()
    deadline = time.monotonic() + 20
    while True:  # the worker announces its model right after its first heartbeat
        body = requests.get(url + "/healthz", timeout=10).json()
        if body["workers"] and body["workers"][0]["model"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert body["ok"] is True and body["model"] == "standin" and body["model_setting"] == "standin"
    [entry] = body["workers"]
    assert f":{worker.popen.pid}:" in entry["id"] and entry["runtime"] == "numpy"
    service.stop(worker)  # a clean stop retires the worker and its record
    body = requests.get(url + "/healthz", timeout=10).json()
    assert body["workers"] == [] and body["model"] is None
    assert not any(k.endswith(":worker_models") for k in service.keys())


def test_a_killed_workers_model_record_is_dropped_by_a_live_peer_not_by_a_read(service):
    """A dead worker leaves /healthz as soon as its heartbeat expires; its model record is removed by the live
    peer that reaps it (the heartbeat script), never by a GET."""
    url, _ = service.start_web()
    worker = service.start_worker()
    deadline = time.monotonic() + 20
    while not requests.get(url + "/healthz", timeout=10).json()["workers"][0]["model"]:
        assert time.monotonic() < deadline, "the worker never announced its model"
        time.sleep(0.1)
    worker.signal(9)  # no retire: its heartbeat expires (HEARTBEAT_TTL=2 in tests) and its record stays behind
    deadline = time.monotonic() + 30
    while requests.get(url + "/healthz", timeout=10).json()["workers"]:
        assert time.monotonic() < deadline, "a dead worker still listed"
        time.sleep(0.2)
    records = [k for k in service.keys() if k.endswith(":worker_models")]
    assert records, "GET /healthz removed the dead worker's record: a read wrote"
    peer = service.start_worker()  # its first beats reap the dead worker, record included
    wait_until(lambda: requests.get(url + "/healthz", timeout=10).json()["workers"] and
               all(w["id"] != worker_id(worker) for w in
                   requests.get(url + "/healthz", timeout=10).json()["workers"]), timeout=60)
    client = service.redis_server.client()
    wait_until(lambda: set(client.hkeys(records[0])) == {worker_id(peer).encode()}, timeout=60)

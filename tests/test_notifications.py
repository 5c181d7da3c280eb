"""A lost keyspace notification is recovered by the backup: the request is still answered, long before its
timeout. The pub/sub connections are killed again and again (CLIENT KILL TYPE pubsub) while the worker holds
the batch, so the results are SET while no listener is subscribed and their events are lost."""
from bench.notifications import lost_notification_run

POLL_INTERVAL = 1.0


def test_results_set_while_no_listener_is_subscribed_are_still_answered(service):
    worker = service.start_worker(STANDIN_LATENCY_MS=1500, BATCH_SIZE=32)
    url, web = service.start_web(NOTIFICATIONS=1, POLL_INTERVAL=POLL_INTERVAL, REQUEST_TIMEOUT=30)
    rows, events = lost_notification_run(service, url, worker)

    assert events["kills"], "the listener's connection was never killed"
    assert [r["status"] for r in rows] == [200] * len(rows)
    assert "listener.disconnected" in web.log_text()
    # Each result was found by a poll or by the wake-up at resubscription: within a few poll intervals of
    # being written, not at REQUEST_TIMEOUT (30 s).
    done = {line.split("id=")[1].split()[0] for line in worker.log_text().splitlines() if "job.done" in line}
    assert {r["id"] for r in rows} <= done
    assert max(r["answered_s"] for r in rows) < 1.5 + 5 * POLL_INTERVAL


def test_while_the_listener_hears_a_waiting_request_reads_its_result_once_not_every_poll_interval(service):
    """Notifications must save the round trips polling costs: a request that waits 3 s for its result, with the
    listener subscribed, reads it once (woken by the event), not every POLL_INTERVAL (0.5 s here: 6 reads)."""
    import concurrent.futures

    import redis as redis_py

    from conftest import post_grey, standin_label, wait_until

    service.start_worker(STANDIN_LATENCY_MS=3000, BATCH_SIZE=32)
    url, web = service.start_web(NOTIFICATIONS=1, POLL_INTERVAL=0.5, BACKUP_POLL_S=30, REQUEST_TIMEOUT=60)
    wait_until(lambda: "listener.subscribed" in web.log_text(), timeout=30)
    admin: redis_py.Redis = service.redis()

    def reads():
        return admin.info("commandstats").get("cmdstat_getex", {}).get("calls", 0)

    before, n = reads(), 6
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        answers = list(pool.map(lambda level: (level, post_grey(url, level)), range(40, 40 + n)))
    assert [(a.status_code, a.json()["predictions"][0]["label"]) for _, a in answers] == \
        [(200, standin_label(level)) for level, _ in answers]
    # One read each, and room for a stray wake-up; every 0.5 s would be about 6 each.
    assert reads() - before <= 2 * n


def test_the_backup_read_comes_before_a_missed_result_expires(monkeypatch):
    """RESULT_TTL shorter than BACKUP_POLL_S: the backup read comes every RESULT_TTL / 2 instead (never below
    POLL_INTERVAL), so a result whose event was missed is read before it expires."""
    from imgq import settings
    from imgq.jobs.results import ResultWaiter

    monkeypatch.setattr(settings, "BACKUP_POLL_S", 5.0)
    monkeypatch.setattr(settings, "POLL_INTERVAL", 0.5)
    monkeypatch.setattr(settings, "RESULT_TTL", 2)
    assert ResultWaiter(None).backup_poll == 1.0
    monkeypatch.setattr(settings, "RESULT_TTL", 60)
    assert ResultWaiter(None).backup_poll == 5.0


def test_a_redis_on_a_unix_socket_is_heard_too(service):
    """REDIS_URL=unix://...: the listener's own connection takes no TCP-only option (socket_keepalive), so it
    subscribes and a request is woken by its notification, not found by the backup read."""
    import os
    import tempfile

    from conftest import post_grey, standin_label, wait_until

    with tempfile.TemporaryDirectory(prefix="imgq-sock-") as folder:  # a socket path must be short (108 bytes)
        path = os.path.join(folder, "redis.sock")
        service.use_own_redis("--unixsocket", path, "--unixsocketperm", "700")
        service.env["REDIS_URL"] = f"unix://{path}?db=0"
        service.start_worker(BATCH_SIZE=32)
        url, web = service.start_web(NOTIFICATIONS=1, POLL_INTERVAL=30, BACKUP_POLL_S=30, REQUEST_TIMEOUT=20)
        wait_until(lambda: "listener.subscribed" in web.log_text(), timeout=30)
        answer = post_grey(url, 90)
    assert answer.status_code == 200
    assert answer.json()["predictions"][0]["label"] == standin_label(90)
    assert answer.json()["timings"]["total_ms"] < 10_000  # woken, not read by the 30 s backup poll

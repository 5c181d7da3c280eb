"""A lost keyspace notification is recovered by the backup: the request is still answered, long before its
timeout. The pub/sub connections are killed again and again (CLIENT KILL TYPE pubsub) while the worker holds
the batch, so the results are SET while no listener is subscribed and their events are lost."""
from bench.notifications import lost_notification_run

POLL_INTERVAL = 1.0


def test_results_set_while_no_listener_is_subscribed_are_still_answered(service):
    worker = service.start_worker(STANDIN_LATENCY_MS=1500, BATCH_SIZE=32)
    url, web = service.start_web(NOTIFICATIONS=1, POLL_INTERVAL=POLL_INTERVAL, REQUEST_TIMEOUT=30)
    rows, events = lost_notification_run(service, url)

    assert events["kills"], "the listener's connection was never killed"
    assert [r["status"] for r in rows] == [200] * len(rows)
    assert "listener.disconnected" in web.log_text()
    # Each result was found by a poll or by the wake-up at resubscription: within a few poll intervals of
    # being written, not at REQUEST_TIMEOUT (30 s).
    done = {line.split("id=")[1].split()[0] for line in worker.log_text().splitlines() if "job.done" in line}
    assert {r["id"] for r in rows} <= done
    assert max(r["answered_s"] for r in rows) < 1.5 + 5 * POLL_INTERVAL

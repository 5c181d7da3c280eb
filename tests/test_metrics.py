"""GET /metrics against real processes: the text parses (prometheus_client's parser) and passes
`promtool check metrics`; the workers' figures (kept in Redis) and the live queue figures move as a burst
goes through; a scrape while Redis is down still answers."""
import concurrent.futures
import subprocess
import threading
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from imgq.jobs import keys
from conftest import grey_png
from sysdeps import ensure_command


def scrape(url):
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def samples(text):
    """{(sample name, frozenset of labels): value} of one scrape."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed, name, **labels):
    return parsed.get((name, frozenset(labels.items())))


def promtool_check(text):
    promtool = ensure_command("promtool", "prometheus")
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_metrics_parse_pass_promtool_and_follow_a_burst(service):
    # Batches of at most 8 that take 0.3 s each: a burst of 48 must wait on the queue and be batched.
    service.start_worker(BATCH_SIZE=8, STANDIN_LATENCY_MS=300)
    url, _ = service.start_web(processes=2)  # prometheus_client's multiprocess mode, as gunicorn runs it
    before = samples(scrape(url))
    assert value(before, "imgq_queue_length") == 0 and value(before, "imgq_live_workers") == 1
    assert value(before, "imgq_redis_up") == 1

    n = 48
    answers = []
    burst = threading.Thread(target=lambda: answers.extend(concurrent.futures.ThreadPoolExecutor(n).map(
        lambda level: requests.post(url + "/predict", files={"image": ("g.png", grey_png(level))},
                                    timeout=120).status_code, range(n))))
    burst.start()
    most_queued = most_in_flight = 0
    while burst.is_alive():
        during = samples(scrape(url))
        most_queued = max(most_queued, value(during, "imgq_queue_length"))
        most_in_flight = max(most_in_flight, value(during, "imgq_jobs_in_flight"))
        time.sleep(0.05)
    burst.join()
    assert answers == [200] * n
    assert most_queued > 0 and most_in_flight > 0, (most_queued, most_in_flight)

    text = scrape(url)
    promtool_check(text)
    after = samples(text)
    assert value(after, "imgq_queue_length") == 0 and value(after, "imgq_jobs_in_flight") == 0
    assert value(after, "imgq_jobs_done_total", model="standin") == n
    assert value(after, "imgq_queue_wait_seconds_count", model="standin") == n
    batches = value(after, "imgq_batch_size_count", model="standin")
    assert value(after, "imgq_batch_size_sum", model="standin") == n
    assert 6 <= batches < n  # at most 8 per batch, and the queue made batches of more than one
    assert value(after, "imgq_batch_size_bucket", model="standin", le="1.0") < batches
    assert value(after, "imgq_batch_size_bucket", model="standin", le="8.0") == batches
    assert value(after, "imgq_inference_seconds_count", model="standin") == batches
    assert value(after, "imgq_inference_seconds_sum", model="standin") >= 0.3 * batches * 0.9
    # Web figures, added up over both gunicorn processes.
    assert value(after, "imgq_http_requests_total", endpoint="/predict", method="POST", status="200") == n
    assert value(after, "imgq_request_seconds_count", endpoint="/predict", model="standin") == n
    assert value(after, "predict_requests_total", status="200") == n  # the old names still count


def test_metrics_export_service_counters_and_survive_redis_down(service):
    server = service.use_own_redis()
    url, _ = service.start_web(processes=1)  # single-process mode: the default registry
    # As the heartbeat script counts a dead worker's jobs put back:
    server.client().hset(keys.counters(service.prefix), keys.COUNTER_REQUEUED, 3)
    parsed = samples(scrape(url))
    assert value(parsed, "imgq_jobs_requeued_total") == 3
    assert value(parsed, "imgq_jobs_dead_lettered_total") == 0
    assert value(parsed, "imgq_live_workers") == 0

    server.stop()
    text = scrape(url)
    promtool_check(text)
    parsed = samples(text)
    assert value(parsed, "imgq_redis_up") == 0 and value(parsed, "imgq_queue_length") is None


def test_unknown_paths_are_not_counted_as_predict_answers(service):
    """A 404 on a path that does not exist is not a /predict answer: every predict_requests_total series
    stays as it was (the app-wide error handler once counted it there)."""
    url, _ = service.start_web()
    assert requests.post(url + "/predict", timeout=10).status_code == 400  # one real /predict answer

    def predict_series():
        return {k: v for k, v in samples(scrape(url)).items() if k[0] == "predict_requests_total"}

    before = predict_series()
    assert before[("predict_requests_total", frozenset({("status", "400")}))] == 1
    for _ in range(3):
        missing = requests.get(url + "/no/such/path", timeout=10)
        assert missing.status_code == 404 and missing.json()["success"] is False
    assert predict_series() == before


def test_made_up_methods_add_no_series(service):
    """Labels come from fixed sets: 50 requests with methods M1..M50 are one "other" series, not 50."""
    url, _ = service.start_web()
    session = requests.Session()
    for n in range(1, 51):
        session.request(f"M{n}", url + "/predict", timeout=10)
    methods = {dict(labels).get("method") for (name, labels) in samples(scrape(url))
               if name == "imgq_http_requests_total"}
    assert "other" in methods and not any(m and m.startswith("M") for m in methods), methods

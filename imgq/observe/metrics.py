"""Prometheus metrics of the web servers and the workers, and the GET /metrics view that exports them all.

Where it sits: beside the flow. Web processes count their answers in prometheus_client metrics (summed over
gunicorn's processes by its multiprocess mode, PROMETHEUS_MULTIPROC_DIR). Workers do not serve
HTTP: each adds its batch's figures to one Redis hash (keys.metrics(): one pipelined round trip of HINCRBY /
HINCRBYFLOAT per *batch*, never per job), and whichever web process is scraped reads that hash and the
queue's live state (LLEN of the queue and the in-flight lists, heartbeats) in one pipeline, through a custom
Collector. So one scrape of any web server shows the whole service, no worker needs a port, and a worker
that died or restarted loses no counts (the hash outlives it; counters do not reset).

    metrics.install(app, routes)                                  # web: counts + GET /metrics
    metrics.record_batch(queue, model, size, inference_s, waits)  # worker: once per batch

Names follow Prometheus' conventions: prefix imgq_, base units (seconds), _total on counters.
"""
from __future__ import annotations

import bisect
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from imgq.jobs import keys
from imgq.observe.logutil import log

if TYPE_CHECKING:
    from flask import Flask, Response
    from prometheus_client.core import Metric

    from imgq.jobs.connection import RedisClient
    from imgq.jobs.queue import JobQueue
    from imgq.web.routes import Routes

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
SECONDS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# --- web: prometheus_client (multiprocess-safe) -------------------------------------------------------
# The first two are the ones the service always had; kept so existing dashboards keep working.
PREDICT_REQUESTS = Counter("predict_requests_total", "POST /predict answers, by HTTP status", ["status"])
PREDICT_LATENCY = Histogram("predict_seconds", "Time to answer a successful POST /predict",
                            buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
HTTP_REQUESTS = Counter("imgq_http_requests_total", "HTTP answers, by endpoint (route), method and status",
                        ["endpoint", "method", "status"])
REQUEST_SECONDS = Histogram("imgq_request_seconds", "End to end: time to answer a successful classification "
                            "request (upload to response), by endpoint and model", ["endpoint", "model"],
                            buckets=SECONDS)

REQUESTS_ABANDONED = Counter("imgq_requests_abandoned_total", "Waiting requests whose client hung up, by what "
                             "became of the job: withdrawn from the queue, or marked cancelled for its worker",
                             ["job"])
ASYNC_SUBMITTED = Counter("imgq_async_jobs_total", "Asynchronous jobs accepted (Prefer: respond-async), by lane",
                          ["lane"])
DEDUPLICATED = Counter("imgq_deduplicated_total", "Requests answered without a model run of their own (DEDUP=1): "
                       "joined a job in flight, or answered from a recent result", ["how"])

# --- workers: series kept in Redis ---------------------------------------------------------------------
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {  # name → (help, bucket bounds)
    "batch_size": ("Jobs per model call, per batch", BATCH_SIZES),
    "inference_seconds": ("Model time per batch", SECONDS),
    "queue_wait_seconds": ("Time a job waited on the queue, enqueue to taken by a worker, per job", SECONDS),
}
COUNTERS = {
    "jobs_done": "Jobs classified by the workers",
    "jobs_failed": "Jobs answered with an error because the model failed on their batch",
    "jobs_expired": "Jobs dropped by a worker because their client had stopped waiting",
    "jobs_bad": "Queue entries a worker could not read as a job",
    "jobs_cancelled": "Jobs a worker dropped unrun because they were cancelled (DELETE /jobs/<id>, a client gone)",
}
# Counters the queue's scripts keep in the hash keys.counters() (queue.py's heartbeat script counts them).
STATS = {
    keys.COUNTER_REQUEUED: ("imgq_jobs_requeued", "Jobs put back on the queue from workers found dead"),
    keys.COUNTER_DEAD_LETTERED: ("imgq_jobs_dead_lettered",
                                 "Jobs set aside in the dead-letter list after killing MAX_ATTEMPTS workers"),
    keys.COUNTER_CALLBACKS_DELIVERED: ("imgq_callbacks_delivered", "Callbacks a receiver accepted (2xx)"),
    keys.COUNTER_CALLBACKS_FAILED: ("imgq_callbacks_failed",
                                    "Callbacks given up on after CALLBACK_MAX_ATTEMPTS refusals or errors"),
}


def _observe(pipe: Any, key: str, model: str, name: str, values: Sequence[float]) -> None:
    bounds = HISTOGRAMS[name][1]
    counts: dict[float, int] = {}  # bucket bound → values in it
    for value in values:
        i = bisect.bisect_left(bounds, value)  # first bucket whose bound is >= value; past the end: +Inf only
        if i < len(bounds):
            counts[bounds[i]] = counts.get(bounds[i], 0) + 1
    for bound, n in counts.items():
        pipe.hincrby(key, f"{model}|{name}|{bound}", n)
    pipe.hincrby(key, f"{model}|{name}|count", len(values))
    pipe.hincrbyfloat(key, f"{model}|{name}|sum", float(sum(values)))


def record_batch(queue: JobQueue, model: str, size: int, inference_s: float, queue_waits_s: Sequence[float],
                 failed: int = 0, expired: int = 0, bad: int = 0, cancelled: int = 0) -> None:
    """Add one batch's figures to the workers' hash, in one round trip. Never raises for Redis: a lost
    batch of counts is better than a worker that stops."""
    key = keys.metrics(queue.prefix)
    pipe = queue.redis.pipeline(transaction=False)
    for name, n in (("jobs_done", size - failed), ("jobs_failed", failed), ("jobs_expired", expired),
                    ("jobs_bad", bad), ("jobs_cancelled", cancelled)):
        if n:
            pipe.hincrby(key, f"{model}|{name}", n)
    if size:
        _observe(pipe, key, model, "batch_size", [size])
        _observe(pipe, key, model, "inference_seconds", [inference_s])
        _observe(pipe, key, model, "queue_wait_seconds", queue_waits_s)
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log("metrics.lost", level="WARNING", model=model, jobs=size, error=str(exc))


class RedisCollector:
    """Exports, at scrape time, the workers' hashes and the live queue figures of every served model (each
    under its own key prefix), read in one pipeline per model."""

    def __init__(self, client: RedisClient, prefixes: Sequence[tuple[str, str]]) -> None:
        self.redis, self.prefixes = client, list(prefixes)  # (model name, its key prefix)

    def describe(self) -> list[Metric]:
        return []  # no Redis call when the collector is registered

    def _read(self, prefix: str) -> list[Any]:
        members = sorted(m.decode() for m in self.redis.smembers(keys.workers(prefix)))
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(keys.queue(prefix))
        pipe.llen(keys.lane_queue(keys.LANES[1], prefix))
        pipe.hgetall(keys.metrics(prefix))
        pipe.hmget(keys.counters(prefix), *STATS)
        for m in members:
            pipe.exists(keys.heartbeat(m, prefix))
            pipe.llen(keys.inflight(m, prefix))
        return list(pipe.execute())

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("imgq_redis_up", "1 when this scrape could read Redis, else 0")
        try:
            read = [(name, self._read(prefix)) for name, prefix in self.prefixes]
        except redis.RedisError as exc:
            log("metrics.redis_down", level="WARNING", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queue_length = sum(answers[0] for _, answers in read)
        batch_lane = sum(answers[1] for _, answers in read)
        yield GaugeMetricFamily("imgq_queue_length", "Jobs waiting on the interactive lane (the queue)",
                                value=queue_length)
        lanes = GaugeMetricFamily("imgq_lane_length", "Jobs waiting, by lane", labels=["lane"])
        lanes.add_metric([keys.LANES[0]], queue_length)
        lanes.add_metric([keys.LANES[1]], batch_lane)
        yield lanes
        waiting = GaugeMetricFamily("imgq_model_queue_length", "Jobs waiting, by served model (both lanes)",
                                    labels=["model"])
        for name, answers in read:
            waiting.add_metric([name], answers[0] + answers[1])
        yield waiting
        yield GaugeMetricFamily("imgq_live_workers", "Workers whose heartbeat is alive",
                                value=sum(sum(answers[4::2]) for _, answers in read))
        yield GaugeMetricFamily("imgq_jobs_in_flight", "Jobs taken by workers and not yet answered",
                                value=sum(sum(answers[5::2]) for _, answers in read))
        for i, (metric, help_text) in enumerate(STATS.values()):
            total = sum(float(answers[3][i] or 0) for _, answers in read)
            yield CounterMetricFamily(metric, help_text, value=total)

        series: dict[str, dict[str, float]] = {}  # model → {field: value}
        for _, answers in read:
            for field, value in answers[2].items():
                model, _, rest = field.decode().partition("|")
                fields = series.setdefault(model, {})
                fields[rest] = fields.get(rest, 0.0) + float(value)
        for name, help_text in COUNTERS.items():
            family = CounterMetricFamily(f"imgq_{name}", help_text, labels=["model"])
            for model in sorted(series):
                family.add_metric([model], series[model].get(name, 0.0))
            yield family
        for name, (help_text, bounds) in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(f"imgq_{name}", help_text, labels=["model"])
            for model in sorted(series):
                s = series[model]
                buckets: list[tuple[str, float]]
                cumulative, buckets = 0.0, []
                for bound in bounds:
                    cumulative += s.get(f"{name}|{bound}", 0.0)
                    buckets.append((str(float(bound)), cumulative))
                buckets.append(("+Inf", s.get(f"{name}|count", 0.0)))
                histogram.add_metric([model], buckets, s.get(f"{name}|sum", 0.0))
            yield histogram


def served(model: str | None) -> None:
    """Called by a classification view once it has its answer: the model goes on imgq_request_seconds."""
    from flask import g
    g.metrics_model = model or "unknown"


def install(app: Flask, routes: Routes) -> None:
    """Count every answer of `app` by endpoint and status, time classification answers, serve GET /metrics."""
    from flask import g, request

    # The Redis figures in a registry of this app's own: REGISTRY is the process' (the counters above), and an
    # app built twice in one process (tests) must not register its collector there twice.
    redis_registry = CollectorRegistry()
    redis_registry.register(RedisCollector(routes.default.queue.redis,
                                           [(route.name, route.queue.prefix) for route in routes]))
    multiproc = "PROMETHEUS_MULTIPROC_DIR" in os.environ

    @app.before_request
    def _start() -> None:
        g.metrics_started = time.monotonic()

    @app.after_request
    def _count(response: Response) -> Response:
        # The route, not the path: /v2/models/<name>/infer is one series whatever the name; 404s are one too.
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        # Labels from fixed sets only: a client choosing its own method name would otherwise add a series each.
        method = request.method if request.method in METHODS else "other"
        HTTP_REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
        model, started = g.get("metrics_model"), g.get("metrics_started")
        if model and started is not None and response.status_code == 200:
            REQUEST_SECONDS.labels(endpoint, model).observe(time.monotonic() - started)
        return response

    @app.get("/metrics")
    def metrics_view() -> tuple[bytes, int, dict[str, str]]:
        registry = REGISTRY
        if multiproc:  # several gunicorn processes: add up their files
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry) + generate_latest(redis_registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}

"""Web server: upload → job → Redis, then result → response.

POST /predict takes a multipart field `image`, prepares it (helpers.prepare_image), pushes a job onto the
Redis queue (jobqueue.JobQueue.push), waits for the worker's result (results.ResultWaiter) and answers in
the course's shape: {"success": true, "predictions": [{"label": "castle", "probability": 0.92}, ...]}.

Run it for real under gunicorn (`gunicorn run_web_server:app`, settings in gunicorn.conf.py), or as the
course does, `python run_web_server.py` (Flask's own threaded server).
"""
import os
import time

import redis
from flask import Flask, jsonify, request
from prometheus_client import REGISTRY, CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess
from werkzeug.exceptions import HTTPException

import classify
import live
import models
import settings
import upload
from helpers import BadImage, prepare_image
from jobqueue import JobQueue, connect
from logutil import log
from results import ResultWaiter

app = Flask(__name__)
# Werkzeug refuses a larger body before reading it, so nothing over the cap is ever decoded.
app.config["MAX_CONTENT_LENGTH"] = settings.MAX_UPLOAD_BYTES

queue = JobQueue(connect(socket_timeout=5))
waiter = ResultWaiter(queue.redis)
waiter.start()  # gunicorn imports this module in each worker process, after forking: one listener each
INPUT_SIZE = models.input_size()
app.register_blueprint(live.blueprint(queue.redis))  # the page: GET / for browsers, GET /activity

REQUESTS = Counter("predict_requests_total", "POST /predict answers, by HTTP status", ["status"])
LATENCY = Histogram("predict_seconds", "Time to answer a successful POST /predict",
                    buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))


def error(status, message, **headers):
    REQUESTS.labels(str(status)).inc()
    response = jsonify(success=False, error=message)
    response.status_code = status
    response.headers.update(headers)
    return response


@app.get("/")
def index():
    if live.wants_page():  # a browser; curl's */* and clients asking for JSON get the index below
        return live.page()
    return jsonify(service="Keras + Redis image classifier",
                   usage="curl -F image=@castle_image.jpg http://HOST:PORT/predict",
                   endpoints={"POST /predict": "classify an image (multipart field 'image')",
                              "GET /healthz": "Redis, queue length and live workers",
                              "GET /metrics": "Prometheus metrics",
                              "GET /activity": "the page's live figures: queue, workers, batches, req/s, p50/p95",
                              "GET / (browser)": "the page: classify an image, watch the queue"})


@app.post("/predict")
def predict():
    started = time.monotonic()
    try:
        data = upload.image_bytes(request)  # not request.files: see upload.py
    except upload.BadUpload as exc:
        return error(400, str(exc))
    if data is None:
        return error(400, "no file in the multipart field 'image' (try: curl -F image=@photo.jpg ...)")
    try:
        pixels = prepare_image(data, INPUT_SIZE)
    except BadImage as exc:
        log("request.rejected", level="WARNING", status=exc.status, error=str(exc))
        return error(exc.status, str(exc))
    prepared = time.monotonic()

    try:
        pending = classify.submit(queue, waiter, pixels, deadline=started + settings.REQUEST_TIMEOUT)
        result = pending.wait()
    except classify.QueueFull as exc:
        return error(exc.status, str(exc), **{"Retry-After": "1"})
    except classify.ClassifyError as exc:
        return error(exc.status, str(exc))
    except redis.RedisError as exc:  # down, unreachable, wrong password, out of memory ...
        log("request.redis_down", level="ERROR", error=str(exc))
        return error(503, "the queue (Redis) is unavailable; try again shortly", **{"Retry-After": "2"})
    total = time.monotonic() - started
    REQUESTS.labels("200").inc()
    LATENCY.observe(total)
    log("request.done", id=pending.id, model=result.get("model"), ms=round(total * 1000, 1))
    return jsonify(success=True, id=pending.id, model=result.get("model"), predictions=result["predictions"],
                   timings={"prepare_ms": round((prepared - started) * 1000, 2),
                            "queue_ms": result.get("queue_ms"),
                            "inference_ms": result.get("inference_ms"),
                            "batch": result.get("batch"),
                            "total_ms": round(total * 1000, 2)})


@app.get("/healthz")
def healthz():
    status = {"redis": "ok", "model": settings.MODEL,
              "notifications": "on" if waiter.listening else "off (polling every %gs)" % waiter.poll_interval}
    try:
        status["queue_length"] = queue.length()
        status["live_workers"] = queue.live_workers()
    except redis.RedisError as exc:
        status["redis"] = f"down: {exc}"
        return jsonify(ok=False, **status), 503
    ok = status["live_workers"] > 0
    if not ok:
        status["problem"] = "no live model worker"
    return jsonify(ok=ok, **status), 200 if ok else 503


@app.get("/metrics")
def metrics():
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # several gunicorn processes: add them all up
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}


@app.errorhandler(HTTPException)
def http_error(exc):
    # 404, 405, 413 ... as JSON like every other answer, not Werkzeug's HTML page.
    if exc.code == 413:
        return error(413, f"upload larger than MAX_UPLOAD_BYTES ({settings.MAX_UPLOAD_BYTES} bytes)")
    return error(exc.code, exc.description)


@app.errorhandler(Exception)
def unexpected(exc):
    log("request.crashed", level="ERROR", error=repr(exc))
    return error(500, "internal error (logged on the server)")


if __name__ == "__main__":
    log("web.start", host=settings.HOST, port=settings.PORT, server="flask")
    app.run(host=settings.HOST, port=settings.PORT, threaded=True)

"""Web server: upload → job → Redis, then result → response.

POST /predict takes a multipart field `image`, prepares it (helpers.prepare_image), pushes a job onto the
Redis queue (jobqueue.JobQueue.push), waits for the worker's result (results.ResultWaiter) and answers in
the course's shape: {"success": true, "predictions": [{"label": "castle", "probability": 0.92}, ...]}.

Run it for real under gunicorn (`gunicorn run_web_server:app`, settings in gunicorn.conf.py), or as the
course does, `python run_web_server.py` (Flask's own threaded server).

Request ids: every request gets one at arrival (tracing.py: the client's X-Request-ID when it is a sane token,
else its W3C trace id), logged as `id=` with `request.received` and `request.done status=...`, and
returned in the X-Request-ID header and, in every JSON answer (errors too), the field "id". The job of a
POST /predict carries the trace id (the worker logs it as `trace=`), so `grep <trace id>` follows the request
through the worker.
"""
import argparse
import json
import time
import uuid

import redis
from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

import classify
import live
import metrics
import models
import openapi
import probes
import protocol_v2
import settings
import tfserving
import tracing
import upload
import workerinfo
from helpers import BadImage, prepare_image
from jobqueue import JobQueue, connect
from logutil import log
from results import ResultWaiter


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Web server (Flask's own, as the course runs it; `gunicorn run_web_server:app` for real use): "
                    "POST /predict, GET /healthz, GET /metrics, GET /.",
        epilog="Every setting is an environment variable (README.md, Configuration), e.g. "
               "HOST=0.0.0.0 PORT=8000 REDIS_URL=redis://127.0.0.1:6379/0 python run_web_server.py")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help, and a wrong setting, end here: nothing below has connected or started yet
    settings.check()
elif settings.errors:
    # Imported by gunicorn, whose config (gunicorn.conf.py) should have called settings.check() already: never
    # serve on defaults put in place of wrong values. Exit code 3 is gunicorn's "worker failed to boot", on
    # which the master stops rather than start the worker again and again.
    settings.check("run_web_server", code=3)

app = Flask(__name__)
# Werkzeug refuses a larger body before reading it, so nothing over the cap is ever decoded.
app.config["MAX_CONTENT_LENGTH"] = settings.MAX_UPLOAD_BYTES

# Request-path commands (push, /healthz, /activity) give up after REDIS_SOCKET_TIMEOUT: a hung Redis is
# a fast 503. The result wait reads through its own client with the longer REDIS_WAIT_TIMEOUT and retries
# a read that timed out, so a Redis that is merely slow does not turn waiting requests into 503s.
queue = JobQueue(connect(socket_timeout=settings.REDIS_SOCKET_TIMEOUT))
waiter = ResultWaiter(connect(socket_timeout=settings.REDIS_WAIT_TIMEOUT))
waiter.start()  # gunicorn imports this module in each worker process, after forking: one listener each
INPUT_SIZE = models.input_size()
app.register_blueprint(live.blueprint(queue.redis))  # the page: GET / for browsers, GET /activity
tracing.install(app)  # traceparent / X-Request-ID: in every log line and the job, echoed in the response
metrics.install(app, queue)  # counts every answer; GET /metrics (web processes + workers' figures in Redis)
app.register_blueprint(probes.blueprint(queue))  # GET /livez, /readyz
app.register_blueprint(protocol_v2.blueprint(queue, waiter))  # Open Inference Protocol v2: /v2/...
app.register_blueprint(tfserving.blueprint(queue, waiter))  # TF Serving REST: /v1/models/...
app.register_blueprint(openapi.blueprint())  # GET /openapi.json

REQUESTS, LATENCY = metrics.PREDICT_REQUESTS, metrics.PREDICT_LATENCY


# --- the access log ------------------------------------------------------------------------------------
QUIET_PATHS = ("/activity", "/metrics", "/healthz", "/static/")  # polled: their successes log at DEBUG only


@app.before_request
def request_start():
    # g.request_id was set by tracing.py (registered first, so it runs first): the caller's X-Request-ID
    # when sane, else the W3C trace id. The job's id (a Redis key, a waiter's slot) must be unique, and two
    # requests may share a client's X-Request-ID or trace: it is the request's id when that is a trace made
    # here, else a fresh uuid4. The job carries the trace (job.py), and request.done names the job.
    g.job_id = g.request_id if g.request_id == tracing.trace_id() and tracing.fresh() else uuid.uuid4().hex
    g.request_started = time.monotonic()
    g.done_fields = {}
    quiet = request.method == "GET" and request.path.startswith(QUIET_PATHS)
    log("request.received", level="DEBUG" if quiet else "INFO", id=g.request_id, method=request.method,
        path=request.path)


@app.after_request
def request_done(response):
    request_id = g.get("request_id")
    if request_id is None:  # before_request did not run (cannot happen in Flask 3; be safe)
        return response
    if response.status_code >= 400 and response.is_json:  # errors made anywhere (live.py too) carry the id
        body = response.get_json(silent=True)
        if isinstance(body, dict) and "id" not in body:
            response.set_data(json.dumps(dict(body, id=request_id)))
    quiet = response.status_code < 400 and request.method == "GET" and request.path.startswith(QUIET_PATHS)
    log("request.done", level="DEBUG" if quiet else "INFO", id=request_id, status=response.status_code,
        method=request.method, path=request.path,
        ms=round((time.monotonic() - g.request_started) * 1000, 1), **g.get("done_fields", {}))
    return response


def error(status, message, **headers):
    REQUESTS.labels(str(status)).inc()
    response = jsonify(success=False, id=g.get("request_id"), error=message)
    response.status_code = status
    response.headers.update(headers)
    return response


@app.get("/")
def index():
    if live.wants_page():  # a browser; curl's */* and clients asking for JSON get the index below
        return live.page()
    return jsonify(service="Keras + Redis image classifier",
                   usage="curl -F image=@castle_image.jpg http://HOST:PORT/predict",
                   openapi="/openapi.json",
                   endpoints={"POST /predict": "classify an image (multipart field 'image')",
                              "GET /healthz": "Redis, queue length and live workers",
                              "GET /metrics": "Prometheus metrics",
                              "GET /livez, /readyz": "probes: process up; Redis and a worker ready",
                              "POST /v2/models/{name}/infer": "Open Inference Protocol v2 (KServe, Triton clients)",
                              "POST /v1/models/{name}:predict": "TF Serving REST",
                              "GET /openapi.json": "OpenAPI 3 document of every endpoint",
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
        log("request.rejected", level="WARNING", id=g.request_id, status=exc.status, error=str(exc))
        return error(exc.status, str(exc), **exc.headers)  # DecodeBusy: 503 + Retry-After
    prepared = time.monotonic()

    try:
        pending = classify.submit(queue, waiter, pixels, job_id=g.job_id,
                                  deadline=started + settings.REQUEST_TIMEOUT)
        result = pending.wait()
    except classify.QueueFull as exc:
        return error(exc.status, str(exc), **{"Retry-After": "1"})
    except classify.ClassifyError as exc:
        return error(exc.status, str(exc))
    except redis.RedisError as exc:  # down, unreachable, hung, wrong password, out of memory ...
        log("request.redis_down", level="ERROR", id=g.request_id, error=str(exc))
        return error(503, f"the queue (Redis) is {redis_problem(exc)}; try again shortly", **{"Retry-After": "2"})
    total = time.monotonic() - started
    REQUESTS.labels("200").inc()
    LATENCY.observe(total)
    metrics.served(result.get("model"))
    g.done_fields = {"model": result.get("model"), "job": pending.id}  # request.done (request_done) logs them
    return jsonify(success=True, id=g.request_id, model=result.get("model"), predictions=result["predictions"],
                   timings={"prepare_ms": round((prepared - started) * 1000, 2),
                            "queue_ms": result.get("queue_ms"),
                            "inference_ms": result.get("inference_ms"),
                            "batch": result.get("batch"),
                            "total_ms": round(total * 1000, 2)})


def redis_problem(exc):
    """A Redis error in words a client may see: never its text, which names the host, port or user."""
    if isinstance(exc, redis.TimeoutError):
        return f"not answering (no reply within {settings.REDIS_SOCKET_TIMEOUT:g}s)"
    if isinstance(exc, redis.AuthenticationError):
        return "refusing our credentials"
    if isinstance(exc, redis.ConnectionError):
        return "unreachable"
    return "unavailable (it answered with an error)"


@app.get("/healthz")
def healthz():
    status = {"redis": "ok", "model": None, "model_setting": settings.MODEL,
              "notifications": "on" if waiter.listening else "off (polling every %gs)" % waiter.poll_interval}
    try:
        status["queue_length"] = queue.length()
        # The live workers, each with its model: one heartbeat test, so the count and the list agree.
        status["workers"] = workerinfo.serving(queue.redis, queue.prefix)
        status["live_workers"] = len(status["workers"])
        # What serves, as the workers say (MODEL=auto picks at each worker's start); "a, b" if they differ.
        served = sorted({w["model"] for w in status["workers"] if w["model"]})
        status["model"] = ", ".join(served) or None
    except redis.RedisError as exc:
        log("healthz.redis_down", level="WARNING", error=str(exc))
        status["redis"] = f"down: {redis_problem(exc)}"
        return jsonify(ok=False, **status), 503
    ok = status["live_workers"] > 0
    if not ok:
        status["problem"] = "no live model worker"
    return jsonify(ok=ok, **status), 200 if ok else 503


@app.errorhandler(HTTPException)
def http_error(exc):
    # 404, 405, 413 ... as JSON like every other answer, not Werkzeug's HTML page.
    if exc.code == 500:  # Flask hands an unhandled exception here, as InternalServerError, not to unexpected()
        return unexpected(getattr(exc, "original_exception", None) or exc)
    if exc.code == 413:
        return error(413, f"upload larger than MAX_UPLOAD_BYTES ({settings.MAX_UPLOAD_BYTES} bytes)")
    return error(exc.code, exc.description)


@app.errorhandler(Exception)
def unexpected(exc):
    log("request.crashed", level="ERROR", id=g.get("request_id"), error=repr(exc))
    return error(500, "internal error (logged on the server)")


if __name__ == "__main__":  # the settings were checked at the top
    import flask.cli
    from logutil import route_logging
    # Flask's own server in logutil's format too: its banner off, werkzeug's lines through logutil, its
    # per-request lines at DEBUG (the app logs request.done itself).
    flask.cli.show_server_banner = lambda *args, **kwargs: None
    route_logging("werkzeug", action="werkzeug", demote=lambda record: " - - [" in record.getMessage())
    log("web.start", host=settings.HOST, port=settings.PORT, via="flask")
    app.run(host=settings.HOST, port=settings.PORT, threaded=True)

"""POST /predict: upload → pixels → job → Redis, then result → the course's JSON answer.

    {"success": true, "id": "...", "model": "efficientnet_lite0",
     "predictions": [{"label": "castle", "probability": 0.93}, ...], "timings": {...}}

The upload's bytes are read (upload.py) and prepared to the model's input size (images.py) before anything
touches Redis, so a bad upload is a 4xx that costs the queue nothing. The job is pushed and waited for by
classify.py; every error on the way is an imgq.errors.ServiceError that errors.py answers in the course's
shape. GET / is the service's index (JSON for curl, the page for a browser).
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from flask import Blueprint, Response, g, jsonify, request

from imgq import settings
from imgq.errors import BadRequest
from imgq.jobs import callbacks, keys
from imgq.observe import metrics, tracing
from imgq.web import classify, images, page, upload
from imgq.web.images import prepare_image
from imgq.web.routes import Route, Routes


def wants_async() -> bool:
    """Prefer: respond-async (RFC 7240), in any of the request's Prefer headers."""
    return any(token.split(";")[0].strip().lower() == "respond-async"
               for header in request.headers.getlist("Prefer") for token in header.split(","))


def client_timeout(cap: float) -> float:
    """X-Timeout-Ms, the client's own deadline for this request, in seconds and at most `cap`."""
    raw = request.headers.get("X-Timeout-Ms")
    if raw is None:
        return cap
    try:
        ms = int(raw.strip())
    except ValueError:
        raise BadRequest(f"X-Timeout-Ms {raw[:40]!r} is not a whole number of milliseconds") from None
    if ms < 1:
        raise BadRequest("X-Timeout-Ms must be at least 1")
    # Compared before dividing: a 400-digit number is a whole number too, and too big for a float.
    return cap if ms >= cap * 1000 else ms / 1000.0


@contextmanager
def hang_up_watch(wake: threading.Event) -> Iterator[threading.Event | None]:
    """Under gevent: an Event set (and `wake` set with it) when the client closes its connection while its
    request waits, found by a watcher of the event loop that fires when the socket reads (cheaper than a
    greenlet, and this runs on every request). None elsewhere (Flask's server, gthread), where a request whose
    client left still waits for its result: nothing there tells it the client is gone."""
    sock = request.environ.get("gunicorn.socket")
    if sock is None or not images.under_gevent():
        yield None
        return
    import gevent
    from gevent.exceptions import BlockingSwitchOutError
    gone = threading.Event()
    watcher = gevent.get_hub().loop.io(sock.fileno(), 1)  # 1: readable

    def readable() -> None:
        watcher.stop()  # once: data instead would be the client's next request on this connection
        try:
            # Runs in the event loop, which must not wait: MSG_DONTWAIT, and the socket has just become readable.
            closed = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, BlockingSwitchOutError):  # a wake-up with nothing to read after all
            watcher.start(readable)
            return
        except OSError:
            closed = True  # reset by the peer
        except Exception:  # a socket that cannot peek (TLS): stop watching, as if the client stayed
            return
        if closed:
            gone.set()
            wake.set()

    try:
        watcher.start(readable)
        yield gone
    finally:
        watcher.close()


def blueprint(routes: Routes) -> Blueprint:
    bp = Blueprint("predict", __name__)

    @bp.after_request
    def count(response: Response) -> Response:
        # Only this blueprint's answers: a 404 on an unknown path is not a /predict answer.
        if request.endpoint == "predict.predict":
            metrics.PREDICT_REQUESTS.labels(str(response.status_code)).inc()
        return response

    @bp.get("/")
    def index() -> Any:
        if page.wants_page():  # a browser; curl's */* and clients asking for JSON get the index below
            return page.page()
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

    @bp.post("/predict")
    def predict() -> Any:
        started = time.monotonic()
        route = routes.get(request.args.get("model"))  # ?model=<name>; the first served model by default
        queue, waiter, input_size = route.queue, route.waiter, route.input_size
        asynchronous = wants_async()
        if request.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
            raise BadRequest("compressed request bodies are not accepted", 415)
        form = upload.read_form(request, settings.MAX_REQUEST_IMAGES)  # not request.files: see upload.py
        if not form.images:
            raise BadRequest("no file in the multipart field 'image' (try: curl -F image=@photo.jpg ...)")
        lane = form.fields.get("lane", keys.LANES[0])
        if lane not in keys.LANES:
            raise BadRequest(f"unknown lane {lane[:40]!r}: one of {', '.join(keys.LANES)}")
        timeout = client_timeout(settings.ASYNC_TIMEOUT if asynchronous else settings.REQUEST_TIMEOUT)
        if asynchronous:
            return submit_async(route, form, lane, timeout)
        if "callback_url" in form.fields:
            raise BadRequest("callback_url needs an asynchronous request (Prefer: respond-async)")
        pixels = prepare_image(form.images[0], input_size)  # the course's form has one image; more are ignored
        prepared = time.monotonic()
        pending = classify.submit(queue, waiter, pixels, job_id=g.job_id, deadline=started + timeout,
                                  trace=tracing.trace_id(), share=g.get("share"), lane=lane)
        with hang_up_watch(pending.event) as gone:
            result = pending.wait(gone)
        total = time.monotonic() - started
        metrics.PREDICT_LATENCY.observe(total)
        metrics.served(result.get("model"))
        g.done_fields = {"model": result.get("model"), "job": pending.id}  # the access log's request.done names them
        return jsonify(success=True, id=g.request_id, model=result.get("model"), predictions=result["predictions"],
                       timings={"prepare_ms": round((prepared - started) * 1000, 2),
                                "queue_ms": result.get("queue_ms"),
                                "inference_ms": result.get("inference_ms"),
                                "batch": result.get("batch"),
                                "total_ms": round(total * 1000, 2)})

    def submit_async(route: Route, form: upload.Form, lane: str, timeout: float) -> Any:
        """Prefer: respond-async (RFC 7240): every image becomes a job of its own with a record, and the answer
        is 202 at once, Location naming the first job."""
        callback = callbacks.check_url(form.fields["callback_url"]) if "callback_url" in form.fields else ""
        all_pixels = [prepare_image(data, route.input_size) for data in form.images]  # a bad one refuses them all
        owner = g.get("client") or "unknown"
        ids: list[str] = []
        try:
            for pixels in all_pixels:
                ids.append(classify.submit_async(route.queue, route.records, pixels, owner, timeout, lane, callback,
                                                 tracing.trace_id(), g.get("share")))
        except BaseException:
            # All or none: a client told of an error (queue full, over its share) holds no ids to collect, so
            # the jobs already queued for this request are cancelled (a worker drops them unrun).
            for job_id in ids:
                try:
                    route.records.cancel(job_id)
                except redis.RedisError:
                    pass
            raise
        metrics.ASYNC_SUBMITTED.labels(lane).inc(len(ids))
        g.done_fields = {"jobs": ",".join(ids), "lane": lane}
        response = jsonify(success=True, id=ids[0], status="queued",
                           jobs=[{"id": i, "status": "queued", "location": f"/jobs/{i}"} for i in ids])
        response.status_code = 202
        response.headers.update({"Location": f"/jobs/{ids[0]}", "Retry-After": "1",
                                 "Preference-Applied": "respond-async"})
        return response

    return bp

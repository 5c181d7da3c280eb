"""POST /predict: upload → pixels → job → Redis, then result → the course's JSON answer.

    {"success": true, "id": "...", "model": "efficientnet_lite0",
     "predictions": [{"label": "castle", "probability": 0.93}, ...], "timings": {...}}

The upload's bytes are read (upload.py) and prepared to the model's input size (images.py) before anything
touches Redis, so a bad upload is a 4xx that costs the queue nothing. The job is pushed and waited for by
classify.py; every error on the way is an imgq.errors.ServiceError that errors.py answers in the course's
shape. GET / is the service's index (JSON for curl, the page for a browser).
"""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from imgq import models, settings
from imgq.errors import BadRequest
from imgq.jobs.queue import JobQueue
from imgq.jobs.results import ResultWaiter
from imgq.observe import metrics, tracing
from imgq.web import classify, page, upload
from imgq.web.images import prepare_image


def blueprint(queue: JobQueue, waiter: ResultWaiter) -> Blueprint:
    bp = Blueprint("predict", __name__)
    input_size = models.input_size()

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
        data = upload.image_bytes(request)  # not request.files: see upload.py
        if data is None:
            raise BadRequest("no file in the multipart field 'image' (try: curl -F image=@photo.jpg ...)")
        pixels = prepare_image(data, input_size)
        prepared = time.monotonic()
        pending = classify.submit(queue, waiter, pixels, job_id=g.job_id, deadline=started + settings.REQUEST_TIMEOUT,
                                  trace=tracing.trace_id(), share=g.get("share"))
        result = pending.wait()
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

    return bp

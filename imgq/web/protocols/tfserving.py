"""TensorFlow Serving's REST API: POST /v1/models/{name}:predict and GET /v1/models/{name}.

Where it sits: an entry point beside POST /predict, for clients written against TF Serving. The request is
TF Serving's row format, {"instances": [...]} (or its columnar format, {"inputs": ...}); each instance is an
encoded image as {"b64": "<base64 of the file>"} (TF Serving's convention for binary strings), the same
under a named input ({"image": {"b64": ...}}), or a [224][224][3] list of 0..255 pixel values. Every image
goes through the same path as in protocol_v2 (each its own job, all submitted, then waited for). The answer
is {"predictions": [{"probabilities": [1000 floats], "classes": [top 5 indices], "labels": [...],
"scores": [...]}, ...]}, one per instance, in order; errors are {"error": "..."}. The request's limits
and checks are v2's: MAX_REQUEST_IMAGES instances, MAX_REQUEST_PIXELS pixels in all read from the headers
before any image is decoded, JSON too deeply nested a 400 (v2.load_json).
"""
from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import numpy as np
from flask import Blueprint, Response, g, jsonify, request

from imgq.observe import metrics
from imgq.web.protocols import v2
from imgq import settings
from imgq.errors import ProtocolError
from imgq.jobs.workers import readiness
from imgq.web.routes import Routes

TOP_K = 5


def _instance_pixels_or_bytes(instance: Any, i: int, input_size: tuple[int, int]) -> bytes | np.ndarray:
    """One instance → encoded bytes, or a uint8 array of pixels of the model's size."""
    if isinstance(instance, dict) and "b64" not in instance and len(instance) == 1:
        instance = next(iter(instance.values()))  # a named input: {"image": {"b64": ...}}
    if isinstance(instance, dict) and isinstance(instance.get("b64"), str):
        try:
            return base64.b64decode(instance["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"instance {i}: 'b64' is not base64")
    if isinstance(instance, list):
        try:
            array = v2.integer_array(instance)  # types checked before numpy converts (no 1 GB array of strings)
        except ValueError:
            raise ProtocolError(f"instance {i}: a ragged list is not an image")
        except TypeError:
            raise ProtocolError(f"instance {i}: pixel values must be integers 0..255")
        if array.dtype.kind not in "iu" or array.size == 0 or array.min() < 0 or array.max() > 255:
            raise ProtocolError(f"instance {i}: pixel values must be integers 0..255")
        v2.check_pixel_shape((1, *array.shape), input_size)
        return array.astype(np.uint8)
    raise ProtocolError(f"instance {i}: expected {{\"b64\": \"<base64 of an image file>\"}} "
                        "or a [height][width][3] list of pixel values")


def _instances(body: Any) -> list[Any]:
    if not isinstance(body, dict):
        raise ProtocolError("the request must be a JSON object with 'instances'")
    if "instances" in body:
        instances = body["instances"]
    elif "inputs" in body:  # columnar: one input, its value the list of instances (or one instance)
        instances = body["inputs"]
        if isinstance(instances, dict) and len(instances) == 1 and "b64" not in instances:
            instances = next(iter(instances.values()))
        if isinstance(instances, dict):
            instances = [instances]
    else:
        raise ProtocolError("the request needs 'instances' (or 'inputs')")
    if not isinstance(instances, list) or not instances:
        raise ProtocolError("'instances' must be a non-empty list")
    return instances


def blueprint(routes: Routes) -> Blueprint:
    bp = Blueprint("tfserving", __name__)

    @bp.get("/v1/models/<name>")
    def status(name: str) -> Response:
        route = v2.route_of(routes, name)
        ok = readiness(route.queue.redis, route.queue.prefix).ready
        return jsonify(model_version_status=[{
            "version": v2.MODEL_VERSION, "state": "AVAILABLE" if ok else "UNAVAILABLE",
            "status": {"error_code": "OK" if ok else "UNAVAILABLE",
                       "error_message": "" if ok else "no live model worker, or Redis is unavailable"}}])

    @bp.post("/v1/models/<name>:predict")
    def predict(name: str) -> Response:
        started = time.monotonic()
        route = v2.route_of(routes, name)
        try:  # TF Serving needs no Content-Type
            body = v2.load_json(request.get_data(cache=False))
        except ValueError:
            raise ProtocolError("the request is not JSON (Content-Type: application/json)")
        instances = _instances(body)
        if len(instances) > settings.MAX_REQUEST_IMAGES:
            raise ProtocolError(f"{len(instances)} instances in one request; at most "
                                f"MAX_REQUEST_IMAGES ({settings.MAX_REQUEST_IMAGES})", 413)
        items = [_instance_pixels_or_bytes(instance, i, route.input_size) for i, instance in enumerate(instances)]
        pixel_list = v2.prepare_request(items, route.input_size)  # the request's pixel budget, then the decodes
        results = v2.run(route.queue, route.waiter, pixel_list, started)
        probabilities = v2.probabilities_of(results)
        labels = route.labels
        metrics.served(results[0].get("model"))
        predictions: list[dict[str, Any]] = []
        for row in probabilities:
            top = np.argsort(-row, kind="stable")[:TOP_K]
            predictions.append({"probabilities": row.tolist(), "classes": [int(j) for j in top],
                                "labels": [labels[j] for j in top], "scores": [float(row[j]) for j in top]})
        g.done_fields = {"model": results[0].get("model"), "images": len(results)}  # request.done logs them
        return jsonify(predictions=predictions)

    return bp


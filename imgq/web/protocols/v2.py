"""Open Inference Protocol v2 (KServe v2 / Triton) over HTTP: the service as a model server standard clients use.

Where it sits: an entry point beside POST /predict. POST /v2/models/{name}/infer takes one input tensor,
either encoded images (BYTES, one element per image: the file's bytes) or pixels (UINT8 [N, 224, 224, 3]),
turns each image into pixels (images.prepare_image, as /predict does), submits every image as its own job
(classify.submit) and then waits for each, so the images of one request are batched by the workers together
with everybody else's. The jobs ask for the whole probability vector ("outputs": "probabilities").

    GET  /v2                              server metadata          GET /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/1]   model metadata           GET /v2/models/{name}/ready
    POST /v2/models/{name}[/versions/1]/infer

Output PROBABILITIES: FP32 [N, 1000]; asked with parameters {"classification": k} (tritonclient's
class_count), BYTES [N, k] of "score:index:label" strings instead, as Triton's classification extension
does. Tensors travel as JSON, or after the JSON header as raw bytes (the binary tensor data extension:
header Inference-Header-Content-Length, parameters binary_data_size / binary_data / binary_data_output),
which tritonclient uses by default. Every error is {"error": "..."} with a 4xx/5xx status.
"""
from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
from flask import Blueprint, Response, g, jsonify, request

from imgq.observe import tracing
from imgq.web import classify
from imgq.jobs import message
from imgq.observe import metrics
from imgq import models
from imgq import settings
from imgq.errors import BadImage, ProtocolError, WorkerFailed
from imgq.jobs.workers import readiness
from imgq.web.images import prepare_image

if TYPE_CHECKING:
    from imgq.jobs.queue import JobQueue
    from imgq.jobs.results import ResultWaiter

SERVER_NAME = "imgq"
SERVER_VERSION = "1.0"
MODEL_VERSION = "1"
IMAGE_INPUT, PIXELS_INPUT, OUTPUT = "IMAGE", "PIXELS", "PROBABILITIES"
HEADER_LENGTH = "Inference-Header-Content-Length"


def served_names() -> list[str]:
    """Model names the URL may carry. With MODEL=auto the web server cannot know which real model the workers
    chose, so each of them is accepted, and the answer's model_name says which one ran."""
    return [settings.MODEL] + (list(models.REAL_MODELS) if settings.MODEL == "auto" else [])


def check_model(name: str, version: str | None = None) -> None:
    if name not in served_names():
        raise ProtocolError(f"unknown model {name!r}: this server serves {', '.join(served_names())}", 404)
    if version not in (None, "", MODEL_VERSION):
        raise ProtocolError(f"model {name!r} has no version {version!r} (only {MODEL_VERSION!r})", 404)


# --- running several images: each its own job ----------------------------------------------------------
def classify_all(queue: JobQueue, waiter: ResultWaiter, pixel_list: Sequence[np.ndarray],
                 deadline: float) -> list[dict[str, Any]]:
    """Submit every image, then wait for each: results in order. Raises an imgq.errors.ServiceError or a Redis
    error; either way no job of this request is left waiting on the queue."""
    pending: list[classify.Pending] = []
    try:
        for pixels in pixel_list:
            pending.append(classify.submit(queue, waiter, pixels, deadline=deadline, outputs="probabilities",
                                           trace=tracing.trace_id()))
        return [p.wait() for p in pending]
    except BaseException:
        for p in pending:  # already answered ones are gone from the queue: withdraw finds nothing
            p.cancel()
            try:
                queue.withdraw(p.job_text)
            except redis.RedisError:
                pass
        raise


def run(queue: JobQueue, waiter: ResultWaiter, pixel_list: Sequence[np.ndarray],
        started: float) -> list[dict[str, Any]]:
    """classify_all by the request's deadline (REQUEST_TIMEOUT after it arrived)."""
    return classify_all(queue, waiter, pixel_list, started + settings.REQUEST_TIMEOUT)


def probabilities_of(results: list[dict[str, Any]]) -> np.ndarray:
    """The results' probability vectors as one float32 [N, classes] array."""
    if not all("probabilities" in r for r in results):  # a worker of an older version ignores "outputs"
        raise WorkerFailed("a worker answered without the probability vector: update the model workers")
    return np.stack([message.decode_probabilities(r["probabilities"]) for r in results])


def prepare_all(images: Sequence[bytes], input_size: tuple[int, int]) -> list[np.ndarray]:
    """Encoded images → pixels; a bad one fails the request, saying which."""
    if not images:
        raise ProtocolError("no image in the request")
    if len(images) > settings.MAX_REQUEST_IMAGES:
        raise ProtocolError(f"{len(images)} images in one request; at most MAX_REQUEST_IMAGES "
                            f"({settings.MAX_REQUEST_IMAGES})", 413)
    out: list[np.ndarray] = []
    for i, data in enumerate(images):
        try:
            out.append(prepare_image(data, input_size))
        except BadImage as exc:
            raise ProtocolError(f"image {i}: {exc}", exc.status)
    return out


def check_pixels(array: np.ndarray, input_size: tuple[int, int]) -> list[np.ndarray]:
    """A uint8 array that must be [N, h, w, 3] → list of N images."""
    want = (*input_size, 3)
    if array.ndim != 4 or tuple(array.shape[1:]) != want:
        raise ProtocolError(f"pixels of shape {list(array.shape)}; this model takes [N, {want[0]}, {want[1]}, 3]")
    if not 1 <= len(array) <= settings.MAX_REQUEST_IMAGES:
        raise ProtocolError(f"{len(array)} images in one request; 1 to MAX_REQUEST_IMAGES "
                            f"({settings.MAX_REQUEST_IMAGES})", 413 if len(array) else 400)
    return list(array)


# --- the wire format ------------------------------------------------------------------------------------
def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(JSON header dict, binary tail) of an infer request."""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not a number")
        if not 0 < length <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {length} does not fit a body of {len(body)} bytes")
        head, tail = body[:length], body[length:]
    else:
        head, tail = body, b""
    try:
        parsed = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request is not JSON ({exc}); binary tensors need {HEADER_LENGTH}")
    if not isinstance(parsed, dict):
        raise ProtocolError("the request must be a JSON object with 'inputs'")
    return parsed, tail


def deserialize_bytes(buffer: bytes) -> list[bytes]:
    """Triton's BYTES tensor encoding: each element is a 4-byte little-endian length, then that many bytes."""
    items: list[bytes]
    items, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise ProtocolError("BYTES tensor data ends inside an element's length")
        (n,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + n > len(buffer):
            raise ProtocolError("BYTES tensor data ends inside an element")
        items.append(bytes(buffer[offset:offset + n]))
        offset += n
    return items


def serialize_bytes(items: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _uint8_from_json(name: str, data: Any, shape: list[int], count: int) -> np.ndarray:
    """JSON numbers (flat, or nested as the shape) → uint8 array of `shape`; numpy parses the list in C."""
    try:
        array = np.asarray(data)
    except ValueError:  # ragged nesting
        raise ProtocolError(f"input {name}: 'data' is not a regular list of numbers")
    if array.dtype.kind not in "iu" or (array.size and (array.min() < 0 or array.max() > 255)):
        raise ProtocolError(f"input {name}: UINT8 values are integers 0..255")
    if array.size != count:
        raise ProtocolError(f"input {name}: {array.size} values for shape {shape} ({count} expected)")
    return array.astype(np.uint8).reshape(shape)


def _shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ProtocolError(f"input {tensor.get('name')!r}: 'shape' must be a list of non-negative integers")
    return shape


def read_input(request_json: dict[str, Any], tail: bytes, input_size: tuple[int, int]) -> list[Any]:
    """The request's one input tensor → list of pixel arrays, or of encoded images (bytes) to prepare."""
    inputs = request_json.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"'inputs' must hold exactly one tensor: {IMAGE_INPUT} (BYTES, encoded images) "
                            f"or {PIXELS_INPUT} (UINT8 [N, {input_size[0]}, {input_size[1]}, 3])")
    tensor = inputs[0]
    name, datatype = tensor.get("name"), tensor.get("datatype")
    expected = {IMAGE_INPUT: "BYTES", PIXELS_INPUT: "UINT8"}
    if name not in expected:
        raise ProtocolError(f"unknown input {name!r}: send {IMAGE_INPUT} (BYTES) or {PIXELS_INPUT} (UINT8)")
    if datatype != expected[name]:
        raise ProtocolError(f"input {name} has datatype {expected[name]}, not {datatype!r}")
    shape = _shape(tensor)
    count = int(np.prod(shape)) if shape else 1
    parameters = tensor.get("parameters") or {}
    binary_size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size < 0 or binary_size > len(tail):
            raise ProtocolError(f"input {name}: binary_data_size {binary_size!r} does not fit the "
                                f"{len(tail)} binary bytes after the JSON header")
        raw = tail[:binary_size]
        if datatype == "BYTES":
            images = deserialize_bytes(raw)
        else:
            if len(raw) != count:
                raise ProtocolError(f"input {name}: {len(raw)} bytes for shape {shape} ({count} expected)")
            return check_pixels(np.frombuffer(raw, dtype=np.uint8).reshape(shape), input_size)
    else:
        if "data" not in tensor:
            raise ProtocolError(f"input {name} has neither 'data' nor parameters.binary_data_size")
        if datatype == "BYTES":
            values = list(_flatten(tensor["data"]))
            images = []
            for i, value in enumerate(values):
                if isinstance(value, dict) and isinstance(value.get("b64"), str):
                    value = value["b64"]
                if not isinstance(value, str):
                    raise ProtocolError(f"input {name} element {i}: a base64 string expected")
                try:
                    images.append(base64.b64decode(value, validate=True))
                except ValueError:
                    raise ProtocolError(f"input {name} element {i} is not base64 (encoded image files travel "
                                        "as base64 in JSON, or as binary data)")
        else:
            return check_pixels(_uint8_from_json(name, tensor["data"], shape, count), input_size)
    if len(images) != count:
        raise ProtocolError(f"input {name}: {len(images)} elements for shape {shape} ({count} expected)")
    return images  # encoded: prepared by the caller


def requested_outputs(request_json: dict[str, Any]) -> list[tuple[bool, int]]:
    """[(binary, class_count)] for the one output, from 'outputs' or the request's binary_data_output."""
    parameters = request_json.get("parameters") or {}
    default_binary = bool(parameters.get("binary_data_output", False)) if isinstance(parameters, dict) else False
    outputs = request_json.get("outputs")
    if outputs is None:
        return [(default_binary, 0)]
    if not isinstance(outputs, list) or not outputs:
        raise ProtocolError("'outputs' must be a non-empty list")
    wanted: list[tuple[bool, int]] = []
    for output in outputs:
        if not isinstance(output, dict) or output.get("name") != OUTPUT:
            name = output.get("name") if isinstance(output, dict) else output
            raise ProtocolError(f"unknown output {name!r}: this model's output is {OUTPUT}")
        p = output.get("parameters") or {}
        k = p.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= 1000:
            raise ProtocolError("parameters.classification must be an integer 0..1000")
        wanted.append((bool(p.get("binary_data", default_binary)), k))
    return wanted


def output_tensors(probabilities: np.ndarray, labels: Sequence[str],
                   wanted: list[tuple[bool, int]]) -> list[tuple[dict[str, Any], bytes | None]]:
    """[(JSON tensor, binary bytes or None)] for the response."""
    out: list[tuple[dict[str, Any], bytes | None]] = []
    tensor: dict[str, Any]
    raw: Any  # bytes when binary, else None
    data: list[Any] | None
    n = len(probabilities)
    for binary, k in wanted:
        if k:
            order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
            items = [f"{probabilities[i, j]:.6f}:{j}:{labels[j]}" for i in range(n) for j in order[i]]
            tensor = {"name": OUTPUT, "datatype": "BYTES", "shape": [n, k]}
            raw = serialize_bytes([s.encode() for s in items]) if binary else None
            data = items
        else:
            tensor = {"name": OUTPUT, "datatype": "FP32", "shape": list(probabilities.shape)}
            raw = probabilities.astype("<f4").tobytes() if binary else None
            data = probabilities.ravel().tolist() if not binary else None
        if binary:
            tensor["parameters"] = {"binary_data_size": len(raw)}
        else:
            tensor["data"] = data
        out.append((tensor, raw))
    return out


def blueprint(queue: JobQueue, waiter: ResultWaiter) -> Blueprint:
    bp = Blueprint("protocol_v2", __name__)
    input_size = models.input_size()

    @bp.get("/v2")
    def server_metadata() -> Response:
        return jsonify(name=SERVER_NAME, version=SERVER_VERSION,
                       extensions=["classification", "binary_tensor_data"])

    @bp.get("/v2/health/live")
    def server_live() -> Response:
        return jsonify(live=True)

    @bp.get("/v2/health/ready")
    def server_ready() -> tuple[Response, int]:
        state = readiness(queue.redis, queue.prefix)
        return (jsonify(ready=True), 200) if state.ready else (jsonify(ready=False, error=state.problem), 503)

    @bp.get("/v2/models/<name>")
    @bp.get("/v2/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str | None = None) -> Response:
        check_model(name, version)
        h, w = input_size
        return jsonify(name=name, versions=[MODEL_VERSION], platform="keras" if name != "standin" else "standin",
                       inputs=[{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                               {"name": PIXELS_INPUT, "datatype": "UINT8", "shape": [-1, h, w, 3]}],
                       outputs=[{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 1000]}],
                       parameters={"one_input_of": [IMAGE_INPUT, PIXELS_INPUT]})

    @bp.get("/v2/models/<name>/ready")
    @bp.get("/v2/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None) -> tuple[Response, int]:
        check_model(name, version)
        state = readiness(queue.redis, queue.prefix)
        body: dict[str, Any] = {"name": name, "ready": state.ready}
        if state.problem:
            body["error"] = state.problem
        return jsonify(body), 200 if state.ready else 503

    @bp.post("/v2/models/<name>/infer")
    @bp.post("/v2/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str | None = None) -> Any:
        started = time.monotonic()
        check_model(name, version)
        if request.headers.get("Content-Encoding") not in (None, "", "identity"):
            raise ProtocolError("compressed request bodies are not accepted", 415)
        request_json, tail = split_body(request.get_data(cache=False), request.headers.get(HEADER_LENGTH))
        wanted = requested_outputs(request_json)
        images = read_input(request_json, tail, input_size)
        pixel_list = images if isinstance(images[0] if images else None, np.ndarray) else \
            prepare_all(images, input_size)
        results = run(queue, waiter, pixel_list, started)
        probabilities = probabilities_of(results)
        served_model = results[0].get("model")
        metrics.served(served_model)
        tensors = output_tensors(probabilities, models.imagenet_labels(), wanted)
        head: dict[str, Any] = {"model_name": name, "model_version": MODEL_VERSION, "outputs": [t for t, _ in tensors],
                "parameters": {"served_by": served_model, "job_ids": ",".join(r["id"] for r in results)}}
        if isinstance(request_json.get("id"), str):
            head["id"] = request_json["id"]
        g.done_fields = {"model": served_model, "images": len(results)}  # run_web_server's request.done logs them
        binary = [raw for _, raw in tensors if raw is not None]
        if not binary:
            return jsonify(head)
        text = json.dumps(head, separators=(",", ":")).encode()
        return (text + b"".join(binary), 200,
                {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(text))})

    return bp

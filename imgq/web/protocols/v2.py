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

Limits per request, each checked before the work it bounds: MAX_REQUEST_IMAGES images, MAX_REQUEST_PIXELS
pixels in all (from the files' headers, before any is decoded), MAX_REQUEST_OUTPUTS entries in "outputs"
(identical ones answered once), classification counts up to MAX_CLASSIFICATION, an "id" of at most
MAX_INFER_ID_LENGTH characters. Every field's type is checked, so a malformed body is a 400, and an error
quotes a client's own text cut to SHOWN_CHARS characters (shown()).
"""
from __future__ import annotations

import base64
import io
import json
import math
import reprlib
import struct
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
from flask import Blueprint, Response, g, jsonify, request
from PIL import Image

from imgq.observe import tracing
from imgq.web import classify
from imgq.jobs import keys, message
from imgq.observe import metrics
from imgq import settings
from imgq.errors import BadImage, ProtocolError, WorkerFailed
from imgq.jobs.workers import readiness
from imgq.web.routes import Route, Routes, UnknownModel
from imgq.web import containers
from imgq.web.images import FORMATS, prepare_image

if TYPE_CHECKING:
    from imgq.jobs.queue import JobQueue
    from imgq.jobs.results import ResultWaiter

SERVER_NAME = "imgq"
SERVER_VERSION = "1.0"
MODEL_VERSION = "1"
IMAGE_INPUT, PIXELS_INPUT, OUTPUT = "IMAGE", "PIXELS", "PROBABILITIES"
HEADER_LENGTH = "Inference-Header-Content-Length"


def check_version(name: str, version: str | None = None) -> None:
    if version not in (None, "", MODEL_VERSION):
        raise ProtocolError(f"model {shown(name)} has no version {shown(version)} (only {MODEL_VERSION!r})", 404)


def route_of(routes: Routes, name: str, version: str | None = None) -> Route:
    """The served model the URL names (404 in this protocol's shape for any other name or version)."""
    try:
        route = routes.get(name)
    except UnknownModel:
        raise ProtocolError(f"unknown model {shown(name)}: this server serves {', '.join(routes.names)}", 404) \
            from None
    check_version(name, version)
    return route


# --- running several images: each its own job ----------------------------------------------------------
def classify_all(queue: JobQueue, waiter: ResultWaiter, pixel_list: Sequence[np.ndarray],
                 deadline: float, lane: str = keys.LANES[0]) -> list[dict[str, Any]]:
    """Submit every image, then wait for each: results in order. Raises an imgq.errors.ServiceError or a Redis
    error; either way no job of this request is left waiting on the queue."""
    pending: list[classify.Pending] = []
    try:
        for pixels in pixel_list:
            pending.append(classify.submit(queue, waiter, pixels, deadline=deadline, outputs="probabilities",
                                           trace=tracing.trace_id(), share=g.get("share"), lane=lane))
        return [p.wait() for p in pending]
    except BaseException:
        for p in pending:  # already answered ones are gone from the queue: withdraw finds nothing
            p.cancel()
            try:
                p.withdraw()
            except redis.RedisError:
                pass
        raise


def run(queue: JobQueue, waiter: ResultWaiter, pixel_list: Sequence[np.ndarray],
        started: float, timeout: float | None = None, lane: str = keys.LANES[0]) -> list[dict[str, Any]]:
    """classify_all by the request's deadline (`timeout`, at most REQUEST_TIMEOUT, after it arrived)."""
    return classify_all(queue, waiter, pixel_list, started + min(timeout or settings.REQUEST_TIMEOUT,
                                                                 settings.REQUEST_TIMEOUT), lane)


def scheduling(request_json: dict[str, Any]) -> tuple[float | None, str]:
    """The request's own `timeout` (microseconds, as Triton's) and `priority` (1 = the highest, 0 = the
    default; 2 and above are bulk work: the batch lane) parameters → (timeout in seconds or None, lane)."""
    parameters = _object(request_json.get("parameters"), "the request's 'parameters'")
    timeout, priority = parameters.get("timeout"), parameters.get("priority", 0)
    if timeout is not None and (type(timeout) is not int or timeout < 1):
        raise ProtocolError(f"parameters.timeout must be a whole number of microseconds >= 1, not {shown(timeout)}")
    if type(priority) is not int or priority < 0:
        raise ProtocolError(f"parameters.priority must be a whole number >= 0, not {shown(priority)}")
    lane = keys.LANES[0] if priority <= 1 else keys.LANES[1]
    if timeout is None:
        return None, lane
    # Capped before dividing: JSON allows a 400-digit integer, too big for a float.
    return min(timeout, int(settings.REQUEST_TIMEOUT * 1e6)) / 1e6, lane


def probabilities_of(results: list[dict[str, Any]]) -> np.ndarray:
    """The results' probability vectors as one float32 [N, classes] array."""
    if not all("probabilities" in r for r in results):  # a worker of an older version ignores "outputs"
        raise WorkerFailed("a worker answered without the probability vector: update the model workers")
    return np.stack([message.decode_probabilities(r["probabilities"]) for r in results])


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header (Pillow's open reads no pixel), or None when the header
    cannot be read: prepare_image then refuses the file with its own words. It runs on the calling thread (the
    event loop), so the container's segments are counted first (containers.check, microseconds): Pillow's parse
    of a header of many small segments is what can take seconds, and such a header is refused unparsed."""
    containers.check(data)
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            return image.width, image.height
    except Image.DecompressionBombError:  # Pillow's own cap (twice MAX_IMAGE_PIXELS): it gives no size
        raise BadImage(f"image declares more pixels than MAX_IMAGE_PIXELS ({settings.MAX_IMAGE_PIXELS})", 413) \
            from None
    except Exception:
        return None


def prepare_request(items: Sequence[bytes | np.ndarray], input_size: tuple[int, int]) -> list[np.ndarray]:
    """A request's images, encoded files (bytes) or checked pixel arrays (h, w, 3), → pixels, within the
    request's limits: 1 to MAX_REQUEST_IMAGES images of MAX_REQUEST_PIXELS pixels in all. Every file's
    header is read before any file is decoded, so a request over its budget costs no decode. A bad image
    fails the request, saying which."""
    if not items:
        raise ProtocolError("no image in the request")
    if len(items) > settings.MAX_REQUEST_IMAGES:
        raise ProtocolError(f"{len(items)} images in one request; at most MAX_REQUEST_IMAGES "
                            f"({settings.MAX_REQUEST_IMAGES})", 413)
    total = 0
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            total += item.shape[0] * item.shape[1]
            continue
        try:
            size = header_size(item)
        except BadImage as exc:
            raise ProtocolError(f"image {i}: {exc}", exc.status)
        if size is None:
            continue
        width, height = size
        if width * height > settings.MAX_IMAGE_PIXELS:  # refused before any other image is decoded
            raise ProtocolError(f"image {i}: image is {width}x{height} pixels, more than MAX_IMAGE_PIXELS "
                                f"({settings.MAX_IMAGE_PIXELS})", 413)
        total += width * height
    if total > settings.MAX_REQUEST_PIXELS:
        raise ProtocolError(f"the request's {len(items)} images hold {total} pixels; at most MAX_REQUEST_PIXELS "
                            f"({settings.MAX_REQUEST_PIXELS}) in one request", 413)
    out: list[np.ndarray] = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            out.append(item)
            continue
        try:
            out.append(prepare_image(item, input_size))
        except BadImage as exc:
            raise ProtocolError(f"image {i}: {exc}", exc.status)
    return out


def check_pixel_shape(shape: Sequence[int], input_size: tuple[int, int]) -> None:
    """A pixel tensor's shape must be [N, h, w, 3] with 1 <= N <= MAX_REQUEST_IMAGES."""
    want = [*input_size, 3]
    if len(shape) != 4 or list(shape[1:]) != want:
        raise ProtocolError(f"pixels of shape {shown(list(shape))}; this model takes [N, {want[0]}, {want[1]}, 3]")
    if not 1 <= shape[0] <= settings.MAX_REQUEST_IMAGES:
        raise ProtocolError(f"{shown(shape[0])} images in one request; 1 to MAX_REQUEST_IMAGES "
                            f"({settings.MAX_REQUEST_IMAGES})", 413 if shape[0] else 400)


# --- the wire format ------------------------------------------------------------------------------------
SHOWN_CHARS = 80  # most characters of a client's own text an error message quotes
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 6, 4, SHOWN_CHARS, SHOWN_CHARS


def cut(text: str) -> str:
    """`text` at most SHOWN_CHARS characters, cut with an ellipsis."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


def shown(value: Any) -> str:
    """A client's value as an error message quotes it: its repr (control characters escaped), at most
    SHOWN_CHARS characters. A 9 MB field is not echoed back, nor logged, whole; nor repr'd whole first."""
    if isinstance(value, str):
        return cut(repr(value[:SHOWN_CHARS]) + ("..." if len(value) > SHOWN_CHARS else ""))
    return cut(_REPR.repr(value))


def load_json(body: bytes) -> Any:
    """json.loads, where JSON nested deeper than the parser's stack ("[" x 5000) is a 400 like any other
    unreadable body, not a RecursionError. Raises ValueError for the rest; the caller words it."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ProtocolError("the request's JSON is nested too deeply") from None


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(JSON header dict, binary tail) of an infer request."""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} {shown(header_length)} is not a number")
        if not 0 < length <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {shown(length)} does not fit a body of {len(body)} bytes")
        head, tail = body[:length], body[length:]
    else:
        head, tail = body, b""
    try:
        parsed = load_json(head)
    except ValueError as exc:
        raise ProtocolError(f"the request is not JSON ({cut(str(exc))}); binary tensors need {HEADER_LENGTH}")
    if not isinstance(parsed, dict):
        raise ProtocolError("the request must be a JSON object with 'inputs'")
    return parsed, tail


def deserialize_bytes(buffer: bytes, limit: int) -> list[bytes]:
    """Triton's BYTES tensor encoding: each element is a 4-byte little-endian length, then that many bytes.
    More than `limit` elements is refused as soon as it is seen (10 MB of empty elements would be 2.6 M objects)."""
    items: list[bytes]
    items, offset = [], 0
    while offset < len(buffer):
        if len(items) == limit:
            raise ProtocolError(f"BYTES tensor data holds more than the {limit} elements of its shape")
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


def _elements(name: str, data: Any, depth: int, limit: int) -> list[Any]:
    """A JSON tensor's elements in order: `data` flat, or nested as its shape, at most `depth` lists deep
    (deeper is refused). Stops after limit + 1 elements: the caller says the count is wrong. No recursion,
    so no nesting the JSON parser let through can exhaust the stack here."""
    items: list[Any] = []
    stack = [iter([data])]
    while stack and len(items) <= limit:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > depth:
                    raise ProtocolError(f"input {name}: 'data' is nested deeper than its shape")
                stack.append(iter(item))
                break
            items.append(item)
            if len(items) > limit:
                break
        else:
            stack.pop()
    return items


def integer_array(data: list[Any]) -> np.ndarray:
    """JSON integers, flat or nested, → an integer array of their nesting (dtype object for ints past 64 bits).
    Raises ValueError for irregular nesting, TypeError for any element that is not an integer.

    Every element's type is checked before numpy converts anything: np.asarray of 150,528 numbers and one
    2,000-character string makes a 1.2 GB array of strings (4.5 s), and of one 100,000-character string a
    MemoryError. Nested lists are first taken apart by numpy as objects (in C, no element converted)."""
    if data and isinstance(data[0], list):
        try:
            objects = np.array(data, dtype=object)
        except (ValueError, TypeError, RecursionError):
            raise ValueError("irregular nesting") from None
        shape, flat = objects.shape, objects.ravel().tolist()
    else:
        shape, flat = (len(data),), data
    kinds = set(map(type, flat))  # type() is int: JSON's true and false are Python ints too
    if list in kinds:
        raise ValueError("irregular nesting")
    if not kinds <= {int}:
        raise TypeError("not integers")
    return np.array(flat, dtype=None if flat else np.int64).reshape(shape)


def _uint8_from_json(name: str, data: Any, shape: list[int], count: int) -> np.ndarray:
    """JSON numbers, flat or nested as the shape, → uint8 array of `shape`."""
    try:
        array = integer_array(data if isinstance(data, list) else [data])
    except ValueError:
        raise ProtocolError(f"input {name}: 'data' is not a regular list of numbers")
    except TypeError:
        raise ProtocolError(f"input {name}: UINT8 values are integers 0..255")
    if array.dtype.kind not in "iu" or (array.size and (array.min() < 0 or array.max() > 255)):
        raise ProtocolError(f"input {name}: UINT8 values are integers 0..255")
    if array.size != count:
        raise ProtocolError(f"input {name}: {array.size} values for shape {shown(shape)} ({count} expected)")
    if array.ndim != 1 and list(array.shape) != shape:
        raise ProtocolError(f"input {name}: 'data' nested as {shown(list(array.shape))}, not flat or as its "
                            f"shape {shown(shape)}")
    return array.astype(np.uint8).reshape(shape)


def _shape(name: str, tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    # type() is int: JSON's true and false are Python ints too
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise ProtocolError(f"input {name}: 'shape' must be a list of non-negative integers")
    return shape


def _object(value: Any, what: str) -> dict[str, Any]:
    """A 'parameters' field: absent (None) or a JSON object."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, not {shown(value)}")
    return value


def _flag(parameters: dict[str, Any], key: str, default: bool) -> bool:
    value = parameters.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ProtocolError(f"parameters.{key} must be true or false, not {shown(value)}")
    return value


def read_input(request_json: dict[str, Any], tail: bytes, input_size: tuple[int, int]) -> list[Any]:
    """The request's one input tensor → list of pixel arrays, or of encoded images (bytes) to prepare.
    The shape is checked against the request's limits before any data is looked at."""
    inputs = request_json.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"'inputs' must hold exactly one tensor: {IMAGE_INPUT} (BYTES, encoded images) "
                            f"or {PIXELS_INPUT} (UINT8 [N, {input_size[0]}, {input_size[1]}, 3])")
    tensor = inputs[0]
    name, datatype = tensor.get("name"), tensor.get("datatype")
    expected = {IMAGE_INPUT: "BYTES", PIXELS_INPUT: "UINT8"}
    if not isinstance(name, str) or name not in expected:
        raise ProtocolError(f"unknown input {shown(name)}: send {IMAGE_INPUT} (BYTES) or {PIXELS_INPUT} (UINT8)")
    if datatype != expected[name]:
        raise ProtocolError(f"input {name} has datatype {expected[name]}, not {shown(datatype)}")
    shape = _shape(name, tensor)
    count = math.prod(shape)  # Python ints: numpy's product of [2**32, 2**32] overflows to 0
    if name == PIXELS_INPUT:
        check_pixel_shape(shape, input_size)
    elif count > settings.MAX_REQUEST_IMAGES:
        raise ProtocolError(f"{shown(count)} images in one request; at most MAX_REQUEST_IMAGES "
                            f"({settings.MAX_REQUEST_IMAGES})", 413)
    binary_size = _object(tensor.get("parameters"), f"input {name}: 'parameters'").get("binary_data_size")
    if binary_size is not None:
        if type(binary_size) is not int or not 0 <= binary_size <= len(tail):
            raise ProtocolError(f"input {name}: binary_data_size {shown(binary_size)} does not fit the "
                                f"{len(tail)} binary bytes after the JSON header")
        raw = tail[:binary_size]
        if name == PIXELS_INPUT:
            if len(raw) != count:
                raise ProtocolError(f"input {name}: {len(raw)} bytes for shape {shape} ({count} expected)")
            return list(np.frombuffer(raw, dtype=np.uint8).reshape(shape))
        images = deserialize_bytes(raw, count)
    else:
        if "data" not in tensor:
            raise ProtocolError(f"input {name} has neither 'data' nor parameters.binary_data_size")
        if name == PIXELS_INPUT:
            return list(_uint8_from_json(name, tensor["data"], shape, count))
        values = _elements(name, tensor["data"], max(1, len(shape)), count)
        if len(values) > count:
            raise ProtocolError(f"input {name}: more than {count} elements for shape {shown(shape)}")
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
    if len(images) != count:
        raise ProtocolError(f"input {name}: {len(images)} elements for shape {shown(shape)} ({count} expected)")
    return images  # encoded: prepared by the caller


def request_id(request_json: dict[str, Any]) -> str | None:
    """The request's optional 'id', which the answer echoes."""
    value = request_json.get("id")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"'id' must be a string, not {shown(value)}")
    if len(value) > settings.MAX_INFER_ID_LENGTH:
        raise ProtocolError(f"'id' of {len(value)} characters; at most MAX_INFER_ID_LENGTH "
                            f"({settings.MAX_INFER_ID_LENGTH})")
    return value


def requested_outputs(request_json: dict[str, Any]) -> list[tuple[bool, int]]:
    """[(binary, class_count)] for the one output, from 'outputs' or the request's binary_data_output.
    Identical entries are answered once; more than MAX_REQUEST_OUTPUTS entries are refused, so an answer
    holds at most that many tensors of N x max(1000, MAX_CLASSIFICATION) values."""
    parameters = _object(request_json.get("parameters"), "the request's 'parameters'")
    default_binary = _flag(parameters, "binary_data_output", False)
    outputs = request_json.get("outputs")
    if outputs is None:
        return [(default_binary, 0)]
    if not isinstance(outputs, list) or not outputs:
        raise ProtocolError("'outputs' must be a non-empty list")
    if len(outputs) > settings.MAX_REQUEST_OUTPUTS:
        raise ProtocolError(f"{len(outputs)} entries in 'outputs'; at most MAX_REQUEST_OUTPUTS "
                            f"({settings.MAX_REQUEST_OUTPUTS})")
    wanted: list[tuple[bool, int]] = []
    for output in outputs:
        if not isinstance(output, dict) or output.get("name") != OUTPUT:
            name = output.get("name") if isinstance(output, dict) else output
            raise ProtocolError(f"unknown output {shown(name)}: this model's output is {OUTPUT}")
        p = _object(output.get("parameters"), f"output {OUTPUT}: 'parameters'")
        k = p.get("classification", 0)
        if type(k) is not int or not 0 <= k <= settings.MAX_CLASSIFICATION:
            raise ProtocolError(f"parameters.classification must be an integer 0..{settings.MAX_CLASSIFICATION} "
                                "(MAX_CLASSIFICATION)")
        wanted.append((_flag(p, "binary_data", default_binary), k))
    return list(dict.fromkeys(wanted))


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
            k = min(k, probabilities.shape[1])  # as Triton: at most the classes the model has
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


def blueprint(routes: Routes) -> Blueprint:
    bp = Blueprint("protocol_v2", __name__)

    @bp.get("/v2")
    def server_metadata() -> Response:
        return jsonify(name=SERVER_NAME, version=SERVER_VERSION,
                       extensions=["classification", "binary_tensor_data"])

    @bp.get("/v2/health/live")
    def server_live() -> Response:
        return jsonify(live=True)

    @bp.get("/v2/health/ready")
    def server_ready() -> tuple[Response, int]:
        for route in routes:  # ready when every served model is
            state = readiness(route.queue.redis, route.queue.prefix)
            if not state.ready:
                return jsonify(ready=False, error=state.problem), 503
        return jsonify(ready=True), 200

    @bp.get("/v2/models/<name>")
    @bp.get("/v2/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str | None = None) -> Response:
        route = route_of(routes, name, version)
        h, w = route.input_size
        return jsonify(name=name, versions=[MODEL_VERSION], platform="keras" if name != "standin" else "standin",
                       inputs=[{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                               {"name": PIXELS_INPUT, "datatype": "UINT8", "shape": [-1, h, w, 3]}],
                       outputs=[{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(route.labels)]}],
                       parameters={"one_input_of": [IMAGE_INPUT, PIXELS_INPUT]})

    @bp.get("/v2/models/<name>/ready")
    @bp.get("/v2/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None) -> tuple[Response, int]:
        route = route_of(routes, name, version)
        state = readiness(route.queue.redis, route.queue.prefix)
        body: dict[str, Any] = {"name": name, "ready": state.ready}
        if state.problem:
            body["error"] = state.problem
        return jsonify(body), 200 if state.ready else 503

    @bp.post("/v2/models/<name>/infer")
    @bp.post("/v2/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str | None = None) -> Any:
        started = time.monotonic()
        route = route_of(routes, name, version)
        if request.headers.get("Content-Encoding") not in (None, "", "identity"):
            raise ProtocolError("compressed request bodies are not accepted", 415)
        request_json, tail = split_body(request.get_data(cache=False), request.headers.get(HEADER_LENGTH))
        infer_id = request_id(request_json)
        wanted = requested_outputs(request_json)
        timeout, lane = scheduling(request_json)
        pixel_list = prepare_request(read_input(request_json, tail, route.input_size), route.input_size)
        results = run(route.queue, route.waiter, pixel_list, started, timeout, lane)
        probabilities = probabilities_of(results)
        served_model = results[0].get("model")
        metrics.served(served_model)
        tensors = output_tensors(probabilities, route.labels, wanted)
        head: dict[str, Any] = {"model_name": name, "model_version": MODEL_VERSION, "outputs": [t for t, _ in tensors],
                "parameters": {"served_by": served_model, "job_ids": ",".join(r["id"] for r in results)}}
        if infer_id is not None:
            head["id"] = infer_id
        g.done_fields = {"model": served_model, "images": len(results)}  # app.py's request.done line logs them
        binary = [raw for _, raw in tensors if raw is not None]
        if not binary:
            return jsonify(head)
        text = json.dumps(head, separators=(",", ":")).encode()
        return (text + b"".join(binary), 200,
                {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(text))})

    return bp

"""Job and result: the two messages that cross Redis.

A job is one Redis value: a small JSON header, a newline, then the pixels as raw bytes (row-major
height x width x 3 uint8, 150,528 bytes for 224x224). Redis values are binary-safe and the Lua scripts
move jobs as opaque strings, so the pixels need no base64 (a third larger, and a copy plus a character
scan on both sides). The header is JSON and the pixels are only ever read as a uint8 array, so nothing
read from the queue is ever executed or unpickled:

    {"id":"5f0c...","shape":[224,224,3],"dtype":"uint8","enqueued":1763924645.12,"deadline":1763924675.12}\n<pixels>

Optional header fields, after the five above: "trace", the W3C trace id of the request (imgq/observe/tracing.py), which
the worker writes on its lines for the job; "outputs": "probabilities" asks the worker for the whole
probability vector as well (result field "probabilities": base64 of 1000 float32 little-endian), for the
protocol endpoints; "async": 1, a job with a record the worker keeps up to date (records.py); "callback": 1,
a job whose result is POSTed to its client when it ends (callbacks.py); "share": the key of its client's
share of the queue, which the worker that takes the job gives a unit back to (shares.py).

The value always starts with `{"id":"<id>"`, so a Lua script finds a job's id in its first bytes without
parsing the header or touching the pixels (imgq/jobs/queue.py's job_field matches it in the first 512 bytes;
job_id_of below reads the 32-hex ids make_job writes at their fixed place). Compact JSON
escapes every newline, so the first b"\n" ends the header. `deadline` is when the waiting client gives up
(enqueued + REQUEST_TIMEOUT): a worker drops a job found after its deadline, because nobody is waiting for
the answer. A header with no newline after it but an "image" field holding base64 (the previous format) is
still read, so jobs queued by a web server of the previous version are answered during an upgrade.

A result is JSON: {"id", "model", "predictions": [{"label", "probability"} x5], "inference_ms", ...} or
{"id", "error"}.
"""
from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np


ALLOWED_DTYPES = ("uint8",)
ID_START, ID_END = 7, 39  # the id's bytes in every job made here: value[7:39] (Lua: string.sub(v, 8, 39))
_encoder = json.JSONEncoder(separators=(",", ":"))  # one encoder, not one per call of json.dumps


class BadJob(ValueError):
    """A queue entry that is not a job we can run (not JSON, wrong shape, wrong dtype ...)."""

    def __init__(self, message: str, job_id: str | None = None, share: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.share = share  # the client's share key the job carries: its unit goes back all the same


def new_id() -> str:
    return uuid.uuid4().hex


def make_job(job_id: str, pixels: np.ndarray, timeout: float, now: float | None = None, outputs: str | None = None,
             trace: str | None = None, asynchronous: bool = False, callback: bool = False,
             share: str | None = None) -> bytes:
    """pixels: uint8 array (h, w, 3) → the bytes pushed on the queue (JSON header, newline, raw pixels).
    outputs="probabilities": the result will carry the whole probability vector too. asynchronous: the job has a
    record (records.py) the worker keeps up to date; callback: its result is POSTed when it ends (callbacks.py)."""
    now = time.time() if now is None else now
    h, w, c = pixels.shape
    header: dict[str, Any] = {"id": job_id, "shape": [h, w, c], "dtype": "uint8",
              "enqueued": round(now, 4), "deadline": round(now + timeout, 4)}
    if trace:
        header["trace"] = trace
    if outputs:
        header["outputs"] = outputs
    if asynchronous:
        header["async"] = 1
    if callback:
        header["callback"] = 1
    if share:
        header["share"] = share
    head = _encoder.encode(header)
    if pixels.dtype != np.uint8 or not pixels.flags.c_contiguous:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    # One copy of the pixels, into the value Redis receives; join reads the array's buffer directly.
    return b"".join((head.encode(), b"\n", pixels.data))


def job_id_of(raw: bytes | bytearray | memoryview) -> str | None:
    """The id of a job made by make_job, read from its fixed place; None if the value is not shaped so."""
    if raw[:ID_START] == b'{"id":"' and raw[ID_END:ID_END + 1] == b'"':
        return bytes(raw[ID_START:ID_END]).decode("ascii", "replace")
    return None


def parse_job(raw: bytes | str, expected_shape: Sequence[int]) -> tuple[dict[str, Any], np.ndarray]:
    """Queue entry (bytes) → (job dict, uint8 array). The array is a read-only view of `raw`'s bytes (no
    copy). Raises BadJob with the id when one could be read."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    end = raw.find(b"\n")
    header = raw if end < 0 else raw[:end]
    try:
        job = json.loads(header)
    except (ValueError, UnicodeDecodeError):
        raise BadJob("queue entry is not a JSON header")
    if not isinstance(job, dict) or not isinstance(job.get("id"), str) or not job["id"]:
        raise BadJob("queue entry has no string 'id'")
    job_id = job["id"]
    share = job["share"] if isinstance(job.get("share"), str) else None
    if job.get("dtype") not in ALLOWED_DTYPES:
        raise BadJob(f"dtype {job.get('dtype')!r} is not one of {ALLOWED_DTYPES}", job_id, share)
    shape = job.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(n) is int for n in shape)):
        raise BadJob(f"shape {shape!r} is not [height, width, 3]", job_id, share)
    if tuple(shape) != (expected_shape[0], expected_shape[1], 3):
        raise BadJob(f"shape {shape} does not match the model's input {list(expected_shape)} + [3]", job_id, share)
    size = shape[0] * shape[1] * 3
    if end < 0:  # the course's format: base64 pixels inside the JSON
        try:
            pixels = base64_decode_image(job.get("image", ""), shape, job["dtype"])
        except (ValueError, TypeError) as exc:
            raise BadJob(f"image data does not decode to {shape}: {exc}", job_id, share)
        return job, pixels
    if len(raw) - end - 1 != size:
        raise BadJob(f"image data does not decode to {shape}: {len(raw) - end - 1} bytes after the header, "
                     f"not {size}", job_id, share)
    return job, np.frombuffer(raw, dtype=np.uint8, count=size, offset=end + 1).reshape(shape)


def expired(job: dict[str, Any], now: float | None = None) -> bool:
    deadline = job.get("deadline")
    return isinstance(deadline, (int, float)) and (time.time() if now is None else now) > deadline


def make_result(job_id: str | None, **fields: Any) -> str:
    return _encoder.encode(dict(id=job_id, **fields))


def top_predictions(probabilities: np.ndarray, labels: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """One row of class probabilities → the course's list of {"label", "probability"}, best first."""
    # argpartition finds the k best of 1000 without sorting all of them; then only those k are sorted.
    k = min(k, len(probabilities))  # a model of fewer classes than k lists them all
    best = np.argpartition(probabilities, -k)[-k:]
    order = best[np.argsort(probabilities[best])[::-1]]
    return [{"label": labels[i], "probability": round(float(probabilities[i]), 6)} for i in order]


def encode_probabilities(row: np.ndarray) -> str:
    """One row of probabilities → base64 of float32 little-endian (5.3 KB for 1000 classes, vs ~20 KB as JSON)."""
    return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")


def decode_probabilities(text: str | bytes) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def base64_decode_image(text: str | bytes, shape: Sequence[int], dtype: str = "uint8") -> np.ndarray:
    """base64 text → array of `shape` (the previous job format). Raises ValueError if the bytes do not fill
    the shape exactly."""
    raw = base64.b64decode(text, validate=True)
    array = np.frombuffer(raw, dtype=np.dtype(dtype))
    return array.reshape(shape)

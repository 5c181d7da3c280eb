"""Job and result: the two messages that cross Redis.

A job is JSON, never a pickle, so nothing read from the queue is ever executed:

    {"id": "5f0c...", "shape": [224, 224, 3], "dtype": "uint8", "image": "<base64>",
     "enqueued": 1763924645.12, "deadline": 1763924675.12, "trace": "4bf92f35..."}

Optional header fields: "trace", the W3C trace id of the request (tracing.py), which the worker writes on
its lines for the job; "outputs": "probabilities" asks the worker for the whole probability vector as well
(result field "probabilities": base64 of 1000 float32 little-endian), for the protocol endpoints.

`deadline` is when the waiting client gives up (enqueued + REQUEST_TIMEOUT): a worker drops a job found
after its deadline, because nobody is waiting for the answer. A result is JSON too, either
{"id", "model", "predictions": [{"label", "probability"} x5], "inference_ms", ...} or {"id", "error"}.
"""
import base64
import json
import time
import uuid

import numpy as np

import tracing
from helpers import base64_decode_image, base64_encode_image

ALLOWED_DTYPES = ("uint8",)


class BadJob(ValueError):
    """A queue entry that is not a job we can run (not JSON, wrong shape, wrong dtype ...)."""

    def __init__(self, message, job_id=None):
        super().__init__(message)
        self.job_id = job_id


def new_id():
    return uuid.uuid4().hex


def make_job(job_id, pixels, timeout, now=None, outputs=None):
    """pixels: uint8 array (h, w, 3) → the JSON text pushed on the queue.
    outputs="probabilities": the result will carry the whole probability vector too."""
    now = time.time() if now is None else now
    header = {
        "id": job_id,
        "shape": list(pixels.shape),
        "dtype": "uint8",
        "enqueued": round(now, 4),
        "deadline": round(now + timeout, 4),
    }
    if tracing.trace_id():
        header["trace"] = tracing.trace_id()
    if outputs:
        header["outputs"] = outputs
    head = json.dumps(header, separators=(",", ":"))
    # Base64 text never needs JSON escaping, so the 200 KB image is spliced in rather than run through
    # json.dumps, which would scan it character by character (half a millisecond per job).
    return f'{head[:-1]},"image":"{base64_encode_image(pixels)}"}}'


def parse_job(raw, expected_shape):
    """Queue entry → (job dict, uint8 array). Raises BadJob with the id when one could be read."""
    try:
        job = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadJob("queue entry is not JSON")
    if not isinstance(job, dict) or not isinstance(job.get("id"), str) or not job["id"]:
        raise BadJob("queue entry has no string 'id'")
    job_id = job["id"]
    if job.get("dtype") not in ALLOWED_DTYPES:
        raise BadJob(f"dtype {job.get('dtype')!r} is not one of {ALLOWED_DTYPES}", job_id)
    shape = job.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) for n in shape)):
        raise BadJob(f"shape {shape!r} is not [height, width, 3]", job_id)
    if tuple(shape) != (expected_shape[0], expected_shape[1], 3):
        raise BadJob(f"shape {shape} does not match the model's input {list(expected_shape)} + [3]", job_id)
    try:
        pixels = base64_decode_image(job.get("image", ""), shape, job["dtype"])
    except (ValueError, TypeError) as exc:
        raise BadJob(f"image data does not decode to {shape}: {exc}", job_id)
    return job, pixels


def expired(job, now=None):
    deadline = job.get("deadline")
    return isinstance(deadline, (int, float)) and (time.time() if now is None else now) > deadline


def make_result(job_id, **fields):
    return json.dumps(dict(id=job_id, **fields), separators=(",", ":"))


def top_predictions(probabilities, labels, k=5):
    """One row of class probabilities → the course's list of {"label", "probability"}, best first."""
    order = np.argsort(probabilities)[::-1][:k]
    return [{"label": labels[i], "probability": round(float(probabilities[i]), 6)} for i in order]


def encode_probabilities(row):
    """One row of probabilities → base64 of float32 little-endian (5.3 KB for 1000 classes, vs ~20 KB as JSON)."""
    return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")


def decode_probabilities(text):
    return np.frombuffer(base64.b64decode(text), dtype="<f4")

"""GET and DELETE /jobs/<id>: collect an asynchronous job's result, or cancel it while it waits.

    POST /predict with `Prefer: respond-async`   → 202, Location: /jobs/<id>          (predict.py)
    GET /jobs/<id>    200 the course's JSON when done (until RESULT_TTL), 202 + Retry-After while queued or
                      running, 404 unknown or expired, 410 cancelled, 504 expired unrun, 500/502 failed
    DELETE /jobs/<id> cancels a queued job: 200; 409 when it runs or ended already; 404 unknown

The answer comes from Redis alone (the job's record and its result key), so any web process answers for a
job any other accepted, and a web process that died after its 202 loses nothing. With API keys on, a job is
visible only to the key that submitted it: any other gets the same 404 as for an unknown id.
"""
from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, g, jsonify

from imgq.errors import ServiceError
from imgq.jobs import keys, records
from imgq.web.routes import Route, Routes

JOB_ID = re.compile(r"[0-9a-f]{32}")


class JobNotFound(ServiceError):
    status = 404


def blueprint(routes: Routes) -> Blueprint:
    bp = Blueprint("jobs", __name__)

    def visible(job_id: str) -> tuple[dict[str, str], bytes | None, Route]:
        """The job's record, its result and its model's route; JobNotFound if no served model knows it."""
        if not JOB_ID.fullmatch(job_id):
            raise JobNotFound("unknown job id (or its result expired after RESULT_TTL)")
        for route in routes:  # a job lives under its model's prefix: one round trip per model served
            queue = route.queue
            with queue.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.job(job_id, queue.prefix))
                pipe.get(keys.result(job_id, queue.prefix))
                raw_record, result = pipe.execute()
            record = records.decoded(raw_record)
            if record or result is not None:
                owner = record.get("owner", "")
                if owner.startswith("key:") and owner != g.get("client"):
                    break
                return record, result, route
        raise JobNotFound("unknown job id (or its result expired after RESULT_TTL)")

    def body(job_id: str, status: str, record: dict[str, str], **fields: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"id": job_id, "status": status, **fields}
        if record.get("lane"):
            out["lane"] = record["lane"]
        if record.get("callback"):
            out["callback"] = {"status": record.get("callback_status"),
                               "attempts": int(record.get("callback_attempts") or 0)}
        return out

    @bp.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Any:
        record, result, _ = visible(job_id)
        if result is not None:
            answer = json.loads(result)
            if answer.get("dead_letter"):
                return jsonify(success=False, error="this image crashed the model workers; it was not retried",
                               **body(job_id, "failed", record)), 502
            if "error" in answer:
                return jsonify(success=False, error=f"the worker could not classify the image: {answer['error']}",
                               **body(job_id, "failed", record)), 500
            return jsonify(success=True, model=answer.get("model"), predictions=answer.get("predictions"),
                           **body(job_id, "done", record))
        status = record.get("status", "")
        if status in ("queued", "running"):
            return jsonify(success=True, **body(job_id, status, record)), 202, {"Retry-After": "1"}
        if status == "cancelled":
            return jsonify(success=False, error="the job was cancelled before it ran",
                           **body(job_id, status, record)), 410
        if status == "expired":
            return jsonify(success=False, error="the job's deadline passed before a worker ran it",
                           **body(job_id, status, record)), 504
        raise JobNotFound("the job's result expired (RESULT_TTL)")

    @bp.delete("/jobs/<job_id>")
    def job_cancel(job_id: str) -> Any:
        record, result, route = visible(job_id)
        before = route.records.cancel(job_id) if record else None
        if before in ("queued", "cancelled"):
            return jsonify(success=True, **body(job_id, "cancelled", record))
        if before == "running":
            raise ServiceError("the job is running already; it cannot be cancelled", 409)
        raise ServiceError(f"the job has ended already ({before or 'done'})", 409)

    return bp

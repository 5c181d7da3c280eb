"""Health: GET /livez (the process answers), GET /readyz (it can classify now), GET /healthz (the full report).

Where it sits: beside the flow, for orchestrators, load balancers and people. /livez never touches Redis, so
a Redis outage does not get web processes restarted. /readyz and /healthz answer from the one readiness
function (imgq/jobs/workers.py), as /v2/health/ready does: 200 while Redis answers and at least one model
worker has a live heartbeat, else 503 with the reason. None of them writes to Redis, and none quotes Redis'
own error text (it names the host and port).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from imgq import settings
from imgq.jobs.queue import JobQueue
from imgq.jobs.results import ResultWaiter
from imgq.jobs.workers import readiness
from imgq.observe.logutil import log


def blueprint(queue: JobQueue, waiter: ResultWaiter) -> Blueprint:
    bp = Blueprint("probes", __name__)

    @bp.get("/livez")
    def livez() -> Any:
        return jsonify(live=True)

    @bp.get("/readyz")
    def readyz() -> Any:
        state = readiness(queue.redis, queue.prefix)
        body = {"ready": state.ready, "redis": "ok" if state.redis_ok else "down",
                "live_workers": len(state.workers)}
        if state.problem:
            body["error"] = state.problem
        return jsonify(body), 200 if state.ready else 503

    @bp.get("/healthz")
    def healthz() -> Any:
        state = readiness(queue.redis, queue.prefix)
        status: dict[str, Any] = {
            "ok": state.ready, "redis": state.redis_condition or "ok", "model": ", ".join(state.models) or None,
            "model_setting": settings.MODEL,
            "notifications": "on" if waiter.listening else f"off (polling every {waiter.poll_interval:g}s)"}
        if not state.redis_ok:
            log("healthz.redis_down", level="WARNING", error=str(state.redis_error))
            status["redis"] = f"down: {state.problem.removeprefix('Redis is ') if state.problem else ''}"
            return jsonify(status), 503
        status.update(queue_length=state.queue_length, workers=state.workers, live_workers=len(state.workers))
        if state.problem:
            status["problem"] = state.problem
        return jsonify(status), 200 if state.ready else 503

    return bp

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
from imgq.jobs.workers import Readiness, readiness
from imgq.web.routes import Route, Routes
from imgq.observe.logutil import log


def blueprint(routes: Routes) -> Blueprint:
    bp = Blueprint("probes", __name__)
    single = len(routes) == 1

    def states() -> list[tuple[Route, Readiness]]:
        return [(route, readiness(route.queue.redis, route.queue.prefix)) for route in routes]

    @bp.get("/livez")
    def livez() -> Any:
        return jsonify(live=True)

    @bp.get("/readyz")
    def readyz() -> Any:
        # Ready: Redis answers and every served model has a live worker.
        checked = states()
        problems = [state.problem if single else f"{route.name}: {state.problem}"
                    for route, state in checked if state.problem]
        redis_ok = all(state.redis_ok for _, state in checked)
        body: dict[str, Any] = {"ready": not problems, "redis": "ok" if redis_ok else "down",
                                "live_workers": sum(len(state.workers) for _, state in checked)}
        if problems:
            body["error"] = problems[0] if single else "; ".join(problems)
        return jsonify(body), 200 if not problems else 503

    @bp.get("/healthz")
    def healthz() -> Any:
        checked = states()
        route, state = checked[0]
        hearing = all(r.waiter.hears() for r, _ in checked)
        status: dict[str, Any] = {
            "ok": all(s.ready for _, s in checked), "redis": state.redis_condition or "ok",
            "model": ", ".join(sorted({m for _, s in checked for m in s.models})) or None,
            "model_setting": settings.MODELS or settings.MODEL,
            "notifications": "on" if hearing else f"off (polling every {route.waiter.poll_interval:g}s)"}
        if not state.redis_ok:
            log("healthz.redis_down", level="WARNING", error=str(state.redis_error))
            status["redis"] = f"down: {state.problem.removeprefix('Redis is ') if state.problem else ''}"
            return jsonify(status), 503
        status.update(queue_length=sum(s.queue_length or 0 for _, s in checked),
                      workers=[w for _, s in checked for w in s.workers],
                      live_workers=sum(len(s.workers) for _, s in checked))
        if not single:  # each model: its queue and its workers
            status["models"] = [{"name": r.name, "source": r.model.source, "ready": s.ready,
                                 "queue_length": s.queue_length, "workers": s.workers,
                                 "live_workers": len(s.workers), **({"problem": s.problem} if s.problem else {})}
                                for r, s in checked]
        problems = [s.problem if single else f"{r.name}: {s.problem}" for r, s in checked if s.problem]
        if problems:
            status["problem"] = "; ".join(problems)
        return jsonify(status), 200 if status["ok"] else 503

    return bp

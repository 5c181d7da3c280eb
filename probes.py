"""Kubernetes-style probes: GET /livez (the process answers) and GET /readyz (it can classify now).

Where it sits: beside the flow, for orchestrators and load balancers. /livez never touches Redis, so a
Redis outage does not get web processes restarted; /readyz is 200 only while Redis answers and at least one
model worker has a live heartbeat (jobqueue.JobQueue.live_workers), else 503 with the reason. /healthz
(run_web_server.py) stays, with its fuller report.
"""
import redis
from flask import Blueprint, jsonify


def blueprint(queue):
    bp = Blueprint("probes", __name__)

    @bp.get("/livez")
    def livez():
        return jsonify(live=True)

    @bp.get("/readyz")
    def readyz():
        try:
            workers = queue.live_workers()
        except redis.RedisError as exc:
            return jsonify(ready=False, redis=f"down: {exc}", error="Redis is unavailable"), 503
        if workers == 0:
            return jsonify(ready=False, redis="ok", live_workers=0, error="no live model worker"), 503
        return jsonify(ready=True, redis="ok", live_workers=workers)

    return bp

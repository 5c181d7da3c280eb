"""The page, web side: GET / for a browser, GET /activity for its live view, and the note of every answer.

Where it sits: beside the flow. A browser asking for / gets static/index.html (plain HTML, CSS and one
script from static/, nothing from elsewhere); a client whose Accept prefers JSON, or says */* as curl
does, gets the JSON index (predict.py). The page polls GET /activity every LIVE_INTERVAL;
each answer comes from activity.snapshot (one Redis script call), shared for half an interval by all the
pages this web process serves, so ten open pages cost Redis what one does. Every POST answered here (every
POST classifies) is noted in activity.RequestLog — an append to a list in memory — after the response is
made; the log's own thread sends the notes to Redis once per interval, only while a page watches.

    app.register_blueprint(page.blueprint(redis_client, prefix))
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request

from imgq.observe import activity
from imgq import settings
from imgq.observe.logutil import log

if TYPE_CHECKING:
    from imgq.jobs.connection import RedisClient


def wants_page() -> bool:
    """True when the request prefers text/html to JSON (a browser), False for */* (curl) and JSON clients."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def page() -> Response:
    return current_app.send_static_file("index.html")


def blueprint(client: RedisClient, prefix: str | None = None) -> Blueprint:
    bp = Blueprint("live", __name__)
    requests_log = activity.RequestLog(client, prefix)
    script = activity.snapshot_script(client)
    cache: dict[str, Any] = {"at": 0.0, "body": None}
    lock = threading.Lock()

    @bp.before_app_request
    def note_start() -> None:
        g.live_started = time.monotonic()

    @bp.after_app_request
    def note_answer(response: Response) -> Response:
        started = g.get("live_started")
        if request.method == "POST" and started is not None:
            requests_log.add(response.status_code, time.monotonic() - started)
        elif request.path == "/":
            response.vary.add("Accept")  # the same URL answers HTML or JSON: caches must keep both apart
        return response

    @bp.get("/activity")
    def activity_view() -> Any:
        with lock:  # one snapshot at a time per process; the others reuse it
            if time.monotonic() - cache["at"] >= settings.LIVE_INTERVAL / 2 or cache["body"] is None:
                try:
                    cache["body"] = activity.snapshot(client, prefix, script=script)
                except redis.RedisError as exc:
                    log("live.redis_down", level="WARNING", error=str(exc))
                    return jsonify(success=False, error="the queue (Redis) is unavailable"), 503
                cache["at"] = time.monotonic()
            body = cache["body"]
        response = jsonify(body)
        response.headers["Cache-Control"] = "no-store"
        return response

    return bp

"""The web server, built by create_app(): every endpoint, the error handler and the access log.

    gunicorn 'imgq.web.app:create_app()'      # what `make run` runs (settings in gunicorn.conf.py)
    python run_web_server.py                   # the course's way: Flask's own threaded server

Importing this module connects to nothing and starts no thread. create_app() makes the two Redis clients
(redis-py connects on first use) and registers the blueprints; the result listener starts with the process'
first request, in the process that serves it (after gunicorn forks).

Request ids: every request gets one at arrival (imgq/observe/tracing.py: the client's X-Request-ID when it is
a sane token, else its W3C trace id), logged as `id=` on the access log's `request.done` line, returned in the
X-Request-ID header and, in every JSON answer (errors too), the field "id". A /predict job's id is the
request's id when that is a trace made here, else a fresh uuid4 (job ids must be unique; two requests may
share a client's X-Request-ID). The job carries the trace, so `grep <trace id>` follows the request through
the worker.
"""
from __future__ import annotations

import json
import time
import uuid

from flask import Flask, Response, g, request

from imgq import settings
from imgq.jobs.connection import connect
from imgq.observe import metrics, tracing
from imgq.observe.logutil import log
from imgq.web import auth, errors, jobs_api, openapi, page, predict, probes
from imgq.web.protocols import tfserving, v2
from imgq.web.routes import Routes

# Polled paths (the page, scrapers, probes): logged at DEBUG only, failures too (a failing probe says so itself).
QUIET_PATHS = ("/activity", "/metrics", "/healthz", "/livez", "/readyz", "/static/")


def create_app() -> Flask:
    """The Flask app, with its own Redis clients. Refuses (SystemExit 2, one line per setting) to build on
    settings that were not accepted."""
    # gunicorn.conf.py has checked already; this guards other servers. Exit code 3 is gunicorn's "worker
    # failed to boot", on which the master stops rather than start the worker again and again.
    settings.refuse_open_host()
    settings.check("web", code=3)
    app = Flask(__name__)
    # Werkzeug refuses a larger body before reading it, so nothing over the cap is ever decoded.
    app.config["MAX_CONTENT_LENGTH"] = settings.MAX_UPLOAD_BYTES

    # Request-path commands (push, /healthz, /activity) give up after REDIS_SOCKET_TIMEOUT: a hung Redis is
    # a fast 503. The result wait reads through its own client with the longer REDIS_WAIT_TIMEOUT and retries
    # a read that timed out, so a Redis that is merely slow does not turn waiting requests into 503s.
    routes = Routes(connect(socket_timeout=settings.REDIS_SOCKET_TIMEOUT),
                    connect(socket_timeout=settings.REDIS_WAIT_TIMEOUT))  # one queue and waiter per model
    base = routes.default.queue  # what is not any one model's: shares, the page's view of the default model

    @app.before_request
    def listen() -> None:
        routes.start()  # once per process (a pid check after that): the listeners live where requests wait

    tracing.install(app)  # every later hook and log line has the request's id
    _install_access_log(app)
    auth.install(app, settings.KEY_PREFIX)  # API keys, each client's share, Host check, headers
    errors.install(app)
    metrics.install(app, routes)
    app.register_blueprint(page.blueprint(base.redis, base.prefix))  # GET / for browsers, GET /activity
    app.register_blueprint(predict.blueprint(routes))  # POST /predict, GET /
    app.register_blueprint(probes.blueprint(routes))  # GET /livez, /readyz, /healthz
    app.register_blueprint(jobs_api.blueprint(routes))  # GET, DELETE /jobs/<id> (asynchronous jobs)
    app.register_blueprint(v2.blueprint(routes))  # Open Inference Protocol v2: /v2/...
    app.register_blueprint(tfserving.blueprint(routes))  # TF Serving REST: /v1/models/...
    app.register_blueprint(openapi.blueprint())  # GET /openapi.json
    return app


def _install_access_log(app: Flask) -> None:
    """One INFO line per request, when it is answered (`request.done`); the arrival at DEBUG."""

    @app.before_request
    def request_start() -> None:
        g.job_id = g.request_id if g.request_id == tracing.trace_id() and tracing.fresh() else uuid.uuid4().hex
        g.request_started = time.monotonic()
        g.done_fields = {}
        log("request.received", level="DEBUG", id=g.request_id, method=request.method, path=request.path)

    @app.after_request
    def request_done(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is None:
            return response
        if response.status_code >= 400 and response.is_json:  # errors made anywhere carry the id
            body = response.get_json(silent=True)
            if isinstance(body, dict) and "id" not in body:
                response.set_data(json.dumps(dict(body, id=request_id)))
        quiet = request.method == "GET" and request.path.startswith(QUIET_PATHS)
        log("request.done", level="DEBUG" if quiet else "INFO", id=request_id, status=response.status_code,
            method=request.method, path=request.path,
            ms=round((time.monotonic() - g.request_started) * 1000, 1), **g.get("done_fields", {}))
        return response

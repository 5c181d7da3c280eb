"""gunicorn settings for `gunicorn run_web_server:app`, taken from settings.py (read by gunicorn at start).

Where it sits: the HTTP server in front of run_web_server.py. Besides the numbers, it makes gunicorn's own
output fit the service: its log lines go through logutil (one format, LOG_FORMAT=json too), and the errors
gunicorn answers itself, before Flask sees the request (400 bad request line, 414, 431 ...), are JSON
`{"success": false, "error": ...}` like every other answer instead of gunicorn's HTML page.
"""
import json
import os
import shutil
import tempfile

import gunicorn.util
from gunicorn.glogging import Logger

import logutil
import settings

bind = f"{settings.HOST}:{settings.PORT}"
workers = settings.WEB_PROCESSES
worker_class = "gthread"  # a waiting request holds a thread, not a process
threads = settings.WEB_THREADS
timeout = int(settings.REQUEST_TIMEOUT) + 30
graceful_timeout = int(settings.REQUEST_TIMEOUT) + 5
accesslog = None  # the app logs one line per request itself (request.done)
loglevel = settings.LOG_LEVEL.lower()
# gunicorn 25+ opens a control socket at one shared default path ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl):
# every gunicorn on the machine would fight over it. Nothing here uses gunicornc, so: off.
control_socket_disable = True

# With several processes, /metrics must add up all of them: prometheus_client's multiprocess mode keeps
# each process's counters in files here (set before the workers import prometheus_client).
_own_metrics_dir = workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imgq-metrics-")


class LogutilLogger(Logger):
    """gunicorn's error log ("Booting worker", "Worker timeout" ...) as logutil lines (action `gunicorn`)."""

    def setup(self, cfg):
        super().setup(cfg)
        for old in list(self.error_log.handlers):
            self.error_log.removeHandler(old)
        self.error_log.addHandler(logutil.Handler("gunicorn"))


logger_class = LogutilLogger


def _json_error(sock, status_int, reason, mesg):
    # Replaces gunicorn.util.write_error (gunicorn's HTML error page) with the service's JSON error.
    body = json.dumps({"success": False, "error": f"{reason}: {mesg}"}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin1")
    gunicorn.util.write_nonblock(sock, head + body)


gunicorn.util.write_error = _json_error  # read at call time by gunicorn.workers.base.handle_error


def child_exit(server, worker):
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

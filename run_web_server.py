"""Web server (the course's run_web_server.py): upload → job → Redis, then result → response.

The app is built by imgq.web.app.create_app(); importing this file builds nothing and connects nowhere.
Run it as the course does, `python run_web_server.py` (Flask's own threaded server), or for real under
gunicorn: `gunicorn 'imgq.web.app:create_app()'` (what `make run` does; settings in gunicorn.conf.py).
`gunicorn run_web_server:app` works too: `app` is built when gunicorn asks for it.
"""
import argparse

from imgq import settings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Web server (Flask's own, as the course runs it; `gunicorn 'imgq.web.app:create_app()'` for "
                    "real use): POST /predict, GET /healthz, GET /metrics, GET /.",
        epilog="Every setting is an environment variable (docs/configuration.md), e.g. "
               "HOST=0.0.0.0 PORT=8000 REDIS_URL=redis://127.0.0.1:6379/0 python run_web_server.py")
    return parser.parse_args(argv)


def __getattr__(name):
    # `gunicorn run_web_server:app`: the app is made on that request, never at import.
    if name == "app":
        from imgq.web.app import create_app
        return create_app()
    raise AttributeError(name)


def main(argv=None):
    parse_args(argv)  # --help, and a wrong setting, end here: nothing has connected or started yet
    settings.refuse_open_host()
    settings.check()
    from imgq.jobs import connection
    connection.check_at_start("web", wait_s=3)  # a Redis that evicts keys: one line, exit 2
    import flask.cli

    from imgq.observe.logutil import log, route_logging
    from imgq.web.app import create_app
    app = create_app()
    # Flask's own server in logutil's format too: its banner off, werkzeug's lines through logutil, its
    # per-request lines at DEBUG (the app logs request.done itself).
    flask.cli.show_server_banner = lambda *args, **kwargs: None
    route_logging("werkzeug", action="werkzeug", demote=lambda record: " - - [" in record.getMessage())
    log("web.start", host=settings.HOST, port=settings.PORT, via="flask")
    app.run(host=settings.HOST, port=settings.PORT, threaded=True)


if __name__ == "__main__":
    main()

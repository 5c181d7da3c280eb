"""One log format for every process: text lines that split back into fields, or JSON lines."""
import json
import os
import re
import subprocess
import sys

from conftest import REPO

TEXT_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) (\S+) (\d+) (INFO|WARNING|ERROR|DEBUG) (\S+)(.*)$")


def run_log(env, code):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, **env),
                          capture_output=True, text=True, check=True).stderr.strip().splitlines()


def test_text_line_has_time_server_script_pid_level_action_and_fields():
    code = "from logutil import log; log('job.pushed', id='abc123', queue=3, note='two words')"
    (line,) = run_log({"SERVER_NAME": "web-a", "LOG_FORMAT": "text"}, code)
    ts, server, script, pid, level, action, rest = TEXT_LINE.match(line).groups()
    assert (server, script, level, action) == ("web-a", "-c", "INFO", "job.pushed")
    assert rest == ' id=abc123 queue=3 note="two words"'


def test_json_lines_and_level_filter():
    code = ("from logutil import log; log('hidden', level='DEBUG'); "
            "log('request.done', id='abc', ms=12.5); log('redis.down', level='WARNING', error='x')")
    lines = run_log({"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}, code)
    records = [json.loads(line) for line in lines]
    assert [r["action"] for r in records] == ["request.done", "redis.down"]
    assert records[0]["id"] == "abc" and records[0]["ms"] == 12.5 and records[0]["ts"].endswith("Z")
    assert {"server", "script", "pid", "level"} <= set(records[0])



def test_flask_own_server_logs_only_logutil_lines(tmp_path):
    """The course's `python run_web_server.py`: werkzeug's banner and lines through logutil, JSON end to end."""
    import signal
    import time

    import requests

    from conftest import free_port
    port = free_port()
    env = dict(os.environ, LOG_FORMAT="json", PORT=str(port), REDIS_URL="redis://127.0.0.1:1/0",
               REDIS_CONNECT_TIMEOUT="0.2", PYTHONUNBUFFERED="1")
    with open(tmp_path / "web.log", "w+b") as out:
        # SIGINT as in a terminal: a suite started in the background (nohup, `cmd &`) inherits SIGINT ignored,
        # and Python keeps an ignored SIGINT ignored.
        web = subprocess.Popen([sys.executable, "run_web_server.py"], cwd=REPO, env=env, stdout=out,
                               stderr=subprocess.STDOUT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120  # a fresh clone on a busy machine imports slowly
            while True:
                try:
                    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 503
                    break
                except requests.RequestException:
                    out.seek(0)
                    assert time.monotonic() < deadline and web.poll() is None, out.read().decode()[-3000:]
                    time.sleep(0.2)
        finally:
            web.send_signal(signal.SIGINT)
            try:
                web.wait(60)
            except subprocess.TimeoutExpired:
                web.kill()
                out.seek(0)
                raise AssertionError("python run_web_server.py did not stop on SIGINT:\n"
                                     + out.read().decode()[-3000:]) from None
        out.seek(0)
        lines = out.read().decode().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records and all(r["action"] and r["server"] for r in records)
    assert any(r["action"] == "werkzeug" and "Running on" in r["msg"] for r in records)

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


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # every control character but tab and newline


def test_client_text_cannot_forge_a_line_or_drive_the_terminal():
    code = ("from logutil import log; log('request.done', path='/a\\r\\n2026-01-01T00:00:00.000Z x y 1 INFO forged', "
            "agent='\\x1b[2J\\x1b[31mred', name='caf\\u00e9')")
    for fmt in ("text", "json"):
        lines = run_log({"LOG_FORMAT": fmt}, code)
        assert len(lines) == 1, lines  # the CR LF did not start a second line
        assert not CONTROL.search(lines[0]), repr(lines[0])
        fields = json.loads(lines[0]) if fmt == "json" else None
        if fields:
            assert fields["agent"] == "\x1b[2J\x1b[31mred"  # escaped on the way out, intact when read back


def test_lines_are_capped_and_say_what_was_cut():
    code = "from logutil import log; log('request.rejected', error='x' * 9_000_000, id='abc')"
    for fmt in ("text", "json"):
        (line,) = run_log({"LOG_FORMAT": fmt, "LOG_LINE_MAX": "4096"}, code)
        assert len(line.encode()) + 1 <= 4096
        assert "chars)" in line and "abc" in line
        if fmt == "json":
            assert json.loads(line)["action"] == "request.rejected"


def test_long_lines_of_several_processes_never_tear_each_other(tmp_path):
    """Eight processes write 300 lines of ~4 KB each into one pipe at once, as gunicorn's processes share
    supervisord's: every line read back is whole."""
    code = ("import sys; from logutil import log\n"
            "for i in range(300): log('tear.test', writer=sys.argv[1], n=i, data=sys.argv[1] * 5000)")
    reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read())"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    writers = [subprocess.Popen([sys.executable, "-c", code, letter], cwd=REPO, stderr=reader.stdin,
                                env=dict(os.environ, LOG_FORMAT="json"))
               for letter in "abcdefgh"]
    for w in writers:
        assert w.wait(120) == 0
    reader.stdin.close()
    lines = reader.stdout.read().decode().splitlines()
    reader.wait(60)
    assert len(lines) == 8 * 300
    for line in lines:
        record = json.loads(line)  # a torn line would not parse
        assert set(record["data"].split("...")[0]) == {record["writer"]}


def test_a_hostile_path_reaches_gunicorns_log_escaped(service):
    import requests
    url, web = service.start_web()
    response = requests.get(url + "/x%0d%0a2026-01-01T00:00:00.000Z%20x%20y%201%20INFO%20forged%1b[2J", timeout=10)
    assert response.status_code == 404
    text = web.log_text()
    assert "forged" in text and not CONTROL.search(text.replace("\r\n", "\n"))
    assert not [line for line in text.splitlines() if line.startswith("2026-01-01T00:00:00.000Z x y")]

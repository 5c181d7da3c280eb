"""Settings, checked once at start (settings.py): a wrong value ends the process with one line naming the
variable, the value and what is accepted, exit code 2, no traceback — for the worker, the web server (Flask's
own and its module under gunicorn's import) and the clients. Importing settings never exits.

Each case runs the real entry point as a user would, in a subprocess with one bad environment variable.
"""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, free_port

from imgq import models
from imgq import settings

# (variable, value, words the one line must contain besides the variable and value)
BAD = [
    ("BATCH_SIZE", "abc", "whole number"),
    ("BATCH_SIZE", "0", ">= 1"),
    ("PORT", "-1", "1 to 65535"),
    ("PORT", "70000", "1 to 65535"),
    ("LOG_FORMAT", "xml", "text, json"),
    ("LOG_LEVEL", "bogus", "DEBUG, INFO, WARNING, ERROR"),
    ("REQUEST_TIMEOUT", "-5", "> 0"),
    ("BLOCK_TIMEOUT", "-1", "> 0"),
    ("HEARTBEAT_INTERVAL", "nan", "> 0"),
    ("MODEL", "unknown", "auto, resnet50, efficientnet_lite0, standin"),
    ("NOTIFICATIONS", "maybe", "0/false"),
    ("REDIS_URL", "localhost:6379", "redis://"),
    ("HEARTBEAT_TTL", "1", "more than HEARTBEAT_INTERVAL"),  # a combination: 1 s against the default 5 s
    ("RESULT_TTL", "1", "more than POLL_INTERVAL"),  # a combination: 1 s against the default 1 s poll
    ("BACKUP_POLL_S", "0", "> 0"),
]
ENTRY_POINTS = ["run_model_server.py", "run_web_server.py", "simple_request.py", "stress_test.py"]


def run(args, timeout=60, **env):
    # A fresh environment without the test session's own settings, so only the one bad value is wrong.
    clean = {k: v for k, v in os.environ.items() if k not in settings.__dict__}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=dict(clean, **env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_line_refusal(done, script, name, value, words):
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{script}: invalid setting {name}=")
    assert value in lines[0] and words in lines[0], lines[0]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("name,value,words", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_the_worker_refuses_a_bad_setting_in_one_line(name, value, words):
    done = run(["run_model_server.py"], **{name: value})
    assert_one_line_refusal(done, "run_model_server.py", name, value, words)


@pytest.mark.parametrize("name,value,words", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_the_web_server_refuses_a_bad_setting_in_one_line(name, value, words):
    done = run(["run_web_server.py"], **{name: value})
    assert_one_line_refusal(done, "run_web_server.py", name, value, words)


@pytest.mark.parametrize("script", ["simple_request.py", "stress_test.py"])
def test_the_clients_refuse_a_bad_setting_before_sending_anything(script):
    done = run([script], PORT="http")
    assert_one_line_refusal(done, script, "PORT", "http", "whole number")


def test_every_mistake_gets_its_own_line():
    done = run(["run_model_server.py"], BATCH_SIZE="many", LOG_FORMAT="yaml")
    assert done.returncode == 2
    assert [line.split("invalid setting ")[1].split("=")[0] for line in done.stderr.splitlines()] == \
        ["BATCH_SIZE", "LOG_FORMAT"]


def test_a_password_in_a_wrong_redis_url_is_not_printed():
    done = run(["run_model_server.py"], REDIS_URL="http://:hunter2@db.example:6379/0")
    assert done.returncode == 2 and "hunter2" not in done.stderr and "***" in done.stderr


def test_importing_settings_records_errors_and_keeps_the_defaults():
    # Tests and libraries import settings: a bad value must not exit there, only check() does.
    code = ("import settings; print(settings.BATCH_SIZE, settings.LOG_LEVEL, len(settings.errors)); "
            "settings.check('probe')")
    done = run(["-c", code], BATCH_SIZE="abc", LOG_LEVEL="debug")
    from imgq import settings
    # "debug" is fine (any case); "abc" falls back to the default.
    assert done.stdout.split() == [str(settings.BATCH_SIZE), "DEBUG", "1"]
    assert done.returncode == 2 and done.stderr.startswith("probe: invalid setting BATCH_SIZE='abc'")


def test_good_values_in_any_spelling_are_accepted():
    code = ("import settings; settings.check(); "
            "print(settings.LOG_LEVEL, settings.LOG_FORMAT, settings.MODEL, settings.NOTIFICATIONS, settings.PORT)")
    done = run(["-c", code], LOG_LEVEL="warning", LOG_FORMAT="JSON", MODEL="StandIn", NOTIFICATIONS="off",
               PORT=" 8080 ")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["WARNING", "json", "standin", "False", "8080"]


def test_the_defaults_pass_their_own_checks_and_the_model_choices_match_models_py():
    done = run(["-c", "import settings; settings.check(); print(len(settings.errors))"])
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr
    with open(os.path.join(REPO, "imgq", "settings.py")) as f:
        choices = re.search(r'MODEL = _str\("MODEL", "auto", choices=\(([^)]*)\)', f.read()).group(1)
    assert {c.strip(' "') for c in choices.split(",")} == {"auto"} | set(models.INPUT_SIZES)


def test_gunicorn_stops_on_a_bad_setting_instead_of_serving_defaults():
    # Exit 2 once gunicorn.conf.py calls settings.check() (before binding); until then run_web_server's own
    # check on import stops the worker with gunicorn's "failed to boot" code 3, and the master with it.
    done = run(["-m", "gunicorn", "run_web_server:app"], timeout=120, BATCH_SIZE="x", PORT=str(free_port()),
               WEB_PROCESSES="1")
    assert done.returncode in (2, 3), (done.returncode, done.stderr[-2000:])
    assert "invalid setting BATCH_SIZE='x': expected a whole number >= 1" in done.stderr
    assert "Traceback" not in done.stderr

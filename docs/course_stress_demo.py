"""Question 6, demonstrated: the course's stress-test loop against a live service.

The course's client starts one daemon thread per request, never joins them, and ends a fixed `time.sleep(300)`
after the last start. Whether that final sleep loses requests depends only on whether it is shorter than the time
the service needs to answer them all. At the course's scale (500 requests, 300 s) that takes a slow service; here
both sides are shrunk: 40 requests to a service whose stand-in model takes 1.5 s per batch of 8 (about 7.5 s of
work), once with a final sleep of 2 s (shorter than the work) and once with 15 s (twice as long). Whatever has not
finished when the sleep ends is killed with the process, silently; the script exits 0 either way. A third run
sends 5 requests to a port nobody listens on: each thread dies with an exception, counted nowhere.

    python -m docs.course_stress_demo URL --image FILE     # prints one JSON object (docs/build.py runs it)
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

# The course's stress_test.py, with its constants as parameters (NUM_REQUESTS, SLEEP_COUNT, the final
# sleep); the loop itself is unchanged. Run in a child process, as a user would run the script.
COURSE_CLIENT = '''
from threading import Thread
import requests
import time
import sys

KERAS_REST_API_URL = sys.argv[1]
IMAGE_PATH = sys.argv[2]
NUM_REQUESTS = int(sys.argv[3])
SLEEP_COUNT = float(sys.argv[4])
FINAL_SLEEP = float(sys.argv[5])

def call_predict_endpoint(n):
    image = open(IMAGE_PATH, "rb").read()
    payload = {"image": image}
    r = requests.post(KERAS_REST_API_URL, files=payload).json()
    if r["success"]:
        print("[INFO] thread {} OK".format(n), flush=True)
    else:
        print("[INFO] thread {} FAILED".format(n), flush=True)

for i in range(0, NUM_REQUESTS):
    t = Thread(target=call_predict_endpoint, args=(i,))
    t.daemon = True
    t.start()
    time.sleep(SLEEP_COUNT)

time.sleep(FINAL_SLEEP)
'''


def run_course_client(url, image, n, spacing, final_sleep):
    with tempfile.NamedTemporaryFile("w", suffix="_course_stress_test.py", delete=False) as f:
        f.write(COURSE_CLIENT)
    started = time.monotonic()
    done = subprocess.run([sys.executable, f.name, url, image, str(n), str(spacing), str(final_sleep)],
                          capture_output=True, text=True, timeout=120)
    os.unlink(f.name)
    # By thread number, not by line: two threads' prints can share a line (print writes the text and the newline
    # separately).
    said = dict(re.findall(r"thread (\d+) (OK|FAILED)", done.stdout))
    ok, failed = list(said.values()).count("OK"), list(said.values()).count("FAILED")
    # Python reports a thread killed by an exception once ("Exception in thread ..."), with one "Traceback" per
    # chained exception (requests' ConnectionError carries several): the reports are what counts the threads.
    return {"sent": n, "reported_ok": ok, "reported_failed": failed, "never_reported": n - ok - failed,
            "threads_died": done.stderr.count("Exception in thread"), "tracebacks": done.stderr.count("Traceback"),
            "exit_code": done.returncode, "seconds": round(time.monotonic() - started, 1),
            "final_sleep_s": final_sleep}


def drained(url, timeout=60):
    """Wait until the service's queue is empty and its worker idle: the worker may hold two batches (one in the
    model, the next taken ahead), 1.5 s each."""
    import requests
    health = url.rsplit("/predict", 1)[0] + "/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and requests.get(health, timeout=5).json().get("queue_length"):
        time.sleep(0.2)
    time.sleep(4.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the service's /predict URL")
    p.add_argument("--image", required=True, help="image to upload")
    args = p.parse_args(argv)
    runs = [dict(run_course_client(args.url, args.image, 40, 0.05, 2.0),
                 name="course's loop: 40 requests, final sleep 2 s (shorter than the work)")]
    drained(args.url)  # what the first run left behind is not the second run's work
    runs += [dict(run_course_client(args.url, args.image, 40, 0.05, 15.0),
                 name="course's loop: 40 requests, final sleep 15 s (twice the work)"),
            dict(run_course_client("http://127.0.0.1:9/predict", args.image, 5, 0.05, 1.0),
                 name="course's loop: 5 requests, nothing listening, final sleep 1 s")]
    print(json.dumps({"runs": runs, "settings": {"spacing_s": 0.05, "standin_s_per_batch": 1.5, "batch_size": 8}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

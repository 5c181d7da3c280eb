"""Question 6, demonstrated: the course's stress-test loop against a live service, next to ours.

The course's client starts one daemon thread per request, never joins them, and ends after a fixed
`time.sleep(300)`. Here that loop runs as the course wrote it, with two numbers made smaller so the demo
takes seconds: 40 requests instead of 500, and a final sleep of 2 s instead of 300 s, against a service whose
stand-in model takes 1.5 s per batch of 8 (a slow model, or a busy one). Whatever has not finished when the
sleep ends is killed with the process, silently; the script still exits 0. A request that raises (here: one
to a port nobody listens on) kills its thread with a traceback and is counted nowhere.

    python -m docs.course_stress_demo URL        # prints one JSON object (docs/build.py runs it)
"""
import argparse
import json
import os
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
    ok = sum(" OK" in line for line in done.stdout.splitlines())
    failed = sum("FAILED" in line for line in done.stdout.splitlines())
    return {"sent": n, "reported_ok": ok, "reported_failed": failed, "never_reported": n - ok - failed,
            "tracebacks": done.stderr.count("Traceback"), "exit_code": done.returncode,
            "seconds": round(time.monotonic() - started, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the service's /predict URL")
    p.add_argument("--image", required=True, help="image to upload")
    args = p.parse_args(argv)
    slow = run_course_client(args.url, args.image, 40, 0.05, 2.0)
    refused = run_course_client("http://127.0.0.1:9/predict", args.image, 5, 0.05, 1.0)
    print(json.dumps({"slow_service": slow, "server_down": refused,
                      "settings": {"requests": 40, "spacing_s": 0.05, "final_sleep_s": 2.0}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

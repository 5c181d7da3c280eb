"""Client: send one image to POST /predict and print the top-5 classes, as the course's simple_request.py.

    python simple_request.py                      # castle_image.jpg, http://127.0.0.1:$PORT/predict
    python simple_request.py photo.jpg --url http://host:5000/predict
    python simple_request.py --async              # submit (202), then poll /jobs/<id> with a progress line

Where it sits: *client* → web server → Redis → worker → back. Prints `1. castle: 0.9246` lines and
exits 0; when the server is down, answers an error, or the image is missing, prints one clear line on
stderr and exits 1 (never a traceback). A setting it reads (PORT, REQUEST_TIMEOUT) that is not valid: one line,
exit 2.
"""
import argparse
import os
import sys
import time

import requests

from imgq import settings

HERE = os.path.dirname(os.path.abspath(__file__))
# The course's image, looked for where the user runs the command, then next to the repository (it is
# not copied into the repo).
DEFAULT_IMAGES = ["castle_image.jpg", os.path.join(HERE, "..", "shared", "castle_image.jpg")]


def default_image():
    for path in DEFAULT_IMAGES:
        if os.path.isfile(path):
            return path
    return DEFAULT_IMAGES[0]


def read_image(path=None):
    """(path, bytes) of the image to send: `path`, else the course's castle_image.jpg.
    Raises ValueError with a one-line reason when the file cannot be read (the clients print it)."""
    path = path or default_image()
    try:
        with open(path, "rb") as f:
            return path, f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the image {path}: {exc.strerror}") from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default=None,
                        help="image file to classify (default: castle_image.jpg here, else ../shared/)")
    parser.add_argument("--url", default=f"http://127.0.0.1:{settings.PORT}/predict",
                        help="the service's predict endpoint (default: %(default)s, PORT from settings)")
    parser.add_argument("--timeout", type=float, default=settings.REQUEST_TIMEOUT + 10,
                        help="seconds to wait for the answer (default: REQUEST_TIMEOUT + 10)")
    parser.add_argument("--async", dest="asynchronous", action="store_true",
                        help="submit with Prefer: respond-async (202 at once), then poll GET /jobs/<id> until done")
    parser.add_argument("--api-key", default=os.environ.get("IMGQ_API_KEY"),
                        help="API key, sent as Authorization: Bearer (default: $IMGQ_API_KEY)")
    return parser.parse_args(argv)


def collect(args, location, headers):
    """Poll the job's URL until it is done (or failed), printing one progress line that rewrites itself."""
    url = requests.compat.urljoin(args.url, location)
    waited, status = 0.0, "queued"
    while waited < args.timeout:
        response = requests.get(url, headers=headers, timeout=args.timeout)
        body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
        if response.status_code != 202:
            print(file=sys.stderr)
            return response, body
        status = body.get("status", status)
        print(f"\rjob {body.get('id', '')[:8]}... {status}, {waited:.1f}s", end="", file=sys.stderr, flush=True)
        delay = min(float(response.headers.get("Retry-After", "1")), 1.0)
        time.sleep(delay)
        waited += delay
    raise requests.Timeout()


def fail(message):
    print(f"simple_request: {message}", file=sys.stderr)
    return 1


def main(argv=None):
    args = parse_args(argv)
    settings.check()  # a wrong PORT or REQUEST_TIMEOUT: one line, exit 2
    try:
        path, data = read_image(args.image)
    except ValueError as exc:
        return fail(str(exc))

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        response = requests.post(args.url, files={"image": (os.path.basename(path), data)},
                                 headers={**headers, **({"Prefer": "respond-async"} if args.asynchronous else {})},
                                 timeout=args.timeout)
        body = {}
        if args.asynchronous and response.status_code == 202:
            print(f"submitted: {response.headers['Location']}", file=sys.stderr)
            response, body = collect(args, response.headers["Location"], headers)
    except requests.ConnectionError:
        return fail(f"cannot connect to {args.url}: is the server running? (start it with `make run`)")
    except requests.Timeout:
        return fail(f"no answer from {args.url} within {args.timeout:g}s")
    except requests.RequestException as exc:
        return fail(f"request to {args.url} failed: {exc}")

    try:
        body = body or response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not body.get("success"):
        # The service explains its errors in the JSON "error" field; anything else is shown as received.
        reason = body.get("error") or response.text.strip()[:200] or response.reason
        return fail(f"the server answered {response.status_code}: {reason}")

    for i, prediction in enumerate(body["predictions"]):
        print(f"{i + 1}. {prediction['label']}: {prediction['probability']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Client: the course's stress test, with every thread joined and a report at the end.

    python stress_test.py                          # 500 requests, one every 0.05 s, as the course
    python stress_test.py -n 200 --spacing 0 --concurrency 32 --json report.json --plot latency.png

Where it sits: many *clients* → web server → Redis → workers. Requests start every --spacing seconds
(at most --concurrency in flight), each is timed from send to answer, and once all have finished it
prints sent, succeeded, failures by kind ("HTTP 504", "connection error", "timeout"), throughput and
latency percentiles. Exits 1 if any request failed (2 if a setting it reads is not valid). The --plot
figure is titled with the run's parameters and date, and marks p50, p95 and p99.
"""
import argparse
import collections
import concurrent.futures
import json
import os
import platform
import sys
import threading
import time

import numpy as np
import requests
from tqdm import tqdm

from imgq import settings
from simple_request import read_image


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=500, help="how many requests (default: %(default)s)")
    parser.add_argument("--spacing", type=float, default=0.05,
                        help="seconds between request starts, as the course (default: %(default)s)")
    parser.add_argument("-c", "--concurrency", type=int, default=100,
                        help="most requests in flight at once (default: %(default)s)")
    parser.add_argument("--image", default=None, help="image to send (default: castle_image.jpg)")
    parser.add_argument("--url", default=f"http://127.0.0.1:{settings.PORT}/predict",
                        help="the predict endpoint (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=settings.REQUEST_TIMEOUT + 10,
                        help="per-request timeout in seconds (default: REQUEST_TIMEOUT + 10)")
    parser.add_argument("--api-key", default=os.environ.get("IMGQ_API_KEY"),
                        help="API key, sent as Authorization: Bearer (default: $IMGQ_API_KEY)")
    parser.add_argument("--json", metavar="PATH", help="also write the report (and every request) as JSON")
    parser.add_argument("--plot", metavar="PATH", help="also write a latency histogram and timeline as PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


_local = threading.local()


def session():
    # One keep-alive session per thread: a requests.Session is not safe to share between threads.
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def one_request(url, filename, data, timeout, t0, headers=None):
    """Send one image; never raises. Returns a record: start/latency (s), outcome, server timings."""
    started = time.perf_counter()
    record = {"start_s": round(started - t0, 4)}
    try:
        response = session().post(url, files={"image": (filename, data)}, headers=headers, timeout=timeout)
        try:
            body = response.json()
        except ValueError:
            body = {}
        ok = response.status_code == 200 and body.get("success") is True
        record["outcome"] = "ok" if ok else f"HTTP {response.status_code}"
        if ok:
            record["timings"] = body.get("timings")
        else:
            record["error"] = body.get("error") or response.text[:200]
    except requests.Timeout:
        record["outcome"] = "timeout"
    except requests.ConnectionError:
        record["outcome"] = "connection error"
    except requests.RequestException as exc:
        record["outcome"] = f"error ({type(exc).__name__})"
    record["latency_s"] = round(time.perf_counter() - started, 5)
    return record


def percentiles(latencies):
    if not latencies:
        return {k: None for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")}
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1),
            "mean_ms": round(float(ms.mean()), 1)}


def run(args, data, filename):
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    t0 = time.perf_counter()
    records = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool, \
            tqdm(total=args.requests, unit="req", disable=args.no_progress, file=sys.stderr) as bar:
        futures = []
        for i in range(args.requests):
            # Start on the course's schedule; the pool holds a request back only when --concurrency are busy.
            delay = t0 + i * args.spacing - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            future = pool.submit(one_request, args.url, filename, data, args.timeout, t0, headers)
            future.add_done_callback(lambda _: bar.update())
            futures.append(future)
        for future in futures:  # every request is waited for: none is lost, unlike the course
            records.append(future.result())
    return records, time.perf_counter() - t0


def report(records, elapsed):
    ok = [r for r in records if r["outcome"] == "ok"]
    failures = collections.Counter(r["outcome"] for r in records if r["outcome"] != "ok")
    return {"sent": len(records), "succeeded": len(ok), "failed": sum(failures.values()),
            "failed_by_kind": dict(failures), "elapsed_s": round(elapsed, 3),
            "throughput_rps": round(len(ok) / elapsed, 2) if elapsed > 0 else None,
            "latency_ok": percentiles([r["latency_s"] for r in ok]),
            "latency_all": percentiles([r["latency_s"] for r in records])}


def print_report(summary, url):
    lat = summary["latency_ok"]
    print(f"target       {url}")
    print(f"sent         {summary['sent']}")
    print(f"succeeded    {summary['succeeded']}")
    print(f"failed       {summary['failed']}")
    for kind, count in sorted(summary["failed_by_kind"].items()):
        print(f"  {kind:<11} {count}")
    print(f"elapsed      {summary['elapsed_s']:.2f} s")
    print(f"throughput   {summary['throughput_rps']} succeeded requests/s")
    if lat["p50_ms"] is not None:
        print(f"latency (succeeded) p50 {lat['p50_ms']} ms  p95 {lat['p95_ms']} ms  "
              f"p99 {lat['p99_ms']} ms  max {lat['max_ms']} ms")


PERCENTILE_MARKS = (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red"))


def plot_title(args, summary, date):
    """The figure's title: enough to tell two saved plots apart without their command lines."""
    return (f"{summary['sent']} requests, one every {args.spacing:g} s, at most {args.concurrency} in flight → "
            f"{args.url}\n{date} · {summary['succeeded']} succeeded, {summary['failed']} failed")


def plot(records, path, args, summary, date):
    import matplotlib
    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    fig, (hist, timeline) = plt.subplots(1, 2, figsize=(11, 4.6))
    fig.suptitle(plot_title(args, summary, date), fontsize=10)
    ok = [r for r in records if r["outcome"] == "ok"]
    bad = [r for r in records if r["outcome"] != "ok"]
    hist.hist([r["latency_s"] * 1000 for r in ok] or [0], bins=40, color="tab:blue")
    hist.set(title="Latency of succeeded requests", xlabel="ms", ylabel="requests")
    # p50/p95/p99 of the succeeded requests: dashed lines on both panels, named in the histogram's legend.
    latency = summary["latency_ok"]
    for name, colour in PERCENTILE_MARKS:
        ms = latency[f"{name}_ms"]
        if ms is not None:  # no succeeded request, no percentile to mark
            hist.axvline(ms, color=colour, ls="--", lw=1, label=f"{name} {ms:g} ms")
            timeline.axhline(ms, color=colour, ls="--", lw=1)
    if latency["p50_ms"] is not None:
        hist.legend(loc="upper right", fontsize=8)
    timeline.scatter([r["start_s"] for r in ok], [r["latency_s"] * 1000 for r in ok], s=6, label="succeeded")
    if bad:
        timeline.scatter([r["start_s"] for r in bad], [r["latency_s"] * 1000 for r in bad], s=12,
                         color="tab:red", marker="x", label="failed")
    timeline.set(title="Latency over time", xlabel="request start (s)", ylabel="ms")
    timeline.legend()
    fig.tight_layout()
    # The title and the percentiles also go in the PNG's text chunks, for tools (and tests) that read files.
    marks = ", ".join(f"{name} {latency[name + '_ms']} ms" for name, _ in PERCENTILE_MARKS)
    fig.savefig(path, dpi=100, metadata={"Title": plot_title(args, summary, date), "Description": marks})
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    settings.check()
    try:
        path, data = read_image(args.image)
    except ValueError as exc:
        print(f"stress_test: {exc}", file=sys.stderr)
        return 2
    try:
        records, elapsed = run(args, data, os.path.basename(path))
    except KeyboardInterrupt:
        print("stress_test: interrupted", file=sys.stderr)
        return 130
    summary = report(records, elapsed)
    print_report(summary, args.url)
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.json:
        with open(args.json, "w") as f:
            # When and where it ran, so a saved report can be compared with another honestly.
            ran = {"date": date, "host": platform.node(),
                   "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                              f"{platform.platform()}"}
            json.dump(dict(summary, ran=ran, url=args.url, image=path, requests=records), f, indent=1)
        print(f"report       {args.json}")
    if args.plot:
        plot(records, args.plot, args, summary, date)
        print(f"plot         {args.plot}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

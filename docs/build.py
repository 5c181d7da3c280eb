"""`make docs`: build docs/writeup.pdf from docs/writeup.md, the real source files and real runs.

    python -m docs.build                 # everything (a few minutes): live run, tests, race demo, PDF
    python -m docs.build --draft --fast  # while writing: uncommitted changes allowed, reuse docs/build/*.json
    python -m docs.build --check         # is the committed PDF current? (its listings, its commit against HEAD)

The PDF is built from a commit: `make docs` refuses a tree with uncommitted changes (--draft allows them and
says so on the title page), prints the commit on the title page, and writes docs/writeup.listings.json: every
listing's file, name and line range with a hash of its lines. --check (and tests/test_docs.py) compares that
file with the source, so a listing whose function moved or changed fails instead of showing stale lines.

Steps:
  1. diagrams      docs/diagrams.py → docs/build/figures/*.svg (matplotlib, from the descriptions there)
  2. live run      a real redis-server + gunicorn web server + one worker with the real model: castle_image.jpg
                   through simple_request.py (section 3), its request id grepped out of both logs (section 7),
                   then stress_test.py twice, with the course's settings and saturating (section 6)
                   → docs/build/live.json, docs/build/stress_*.json and .png
  3. race demo     docs/race_demo.py: the course's LRANGE/LTRIM loop and our queue, two web servers and two
                   workers each (section 4) → docs/build/race.json
  4. tests         the service tests that show each fix, run with pytest → docs/build/tests.json
  5. results       bench/results/notifications.json (make bench-notify), read if present, else "not measured yet"
  6. Markdown      docs/writeup.md with its directives resolved → HTML → PDF (WeasyPrint, docs/style.css)

Directives in writeup.md (each on its own line):
  {{code: FILE::NAME}}                     a function, class, method (Class.name) or constant, by ast
  {{code: FILE::NAME | from "A" to "B"}}   only the lines from the first containing A to the next containing B
  {{doc: FILE}}                            the module docstring of FILE
  {{figure: NAME | CAPTION}}               a diagram from docs/diagrams.py
  {{gen: NAME}}                            a table or text made from a result file (tables.py: gen_NAME)
  {{plot: NAME | CAPTION}}                 a measured figure (plots.py)
  Table: CAPTION                           the caption of the Markdown table below it (numbered "Table N.")
  <<<course: CAPTION  ...  >>>             the course's code, quoted (not ours: labelled as the course's)
Numbers are never typed into writeup.md: they come from the result files through {{gen: ...}}, and a
result that is missing prints a "not measured yet" box instead.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

from docs.render import listing_lines, listings, resolve, to_html
from docs.tables import EVIDENCE_TESTS, Results

DOCS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DOCS)
BUILD = os.path.join(DOCS, "build")
CASTLE = os.path.normpath(os.path.join(REPO, "..", "shared", "castle_image.jpg"))
LISTINGS = os.path.join(DOCS, "writeup.listings.json")


def say(message):
    print(f"[docs] {message}", file=sys.stderr, flush=True)


# --- system check ----------------------------------------------------------------------------------

PANGO_PACKAGES = ["libpango-1.0-0", "libpangoft2-1.0-0", "libharfbuzz0b", "fonts-dejavu-core"]


def weasyprint_module():
    """Import WeasyPrint; if its system libraries (Pango) are missing, install them with apt-get when root,
    else stop with the command to run."""
    try:
        import weasyprint
        return weasyprint
    except OSError as exc:
        problem = str(exc).splitlines()[0]
    command = ["apt-get", "install", "-y", "--no-install-recommends", *PANGO_PACKAGES]
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"WeasyPrint cannot load its system libraries ({problem}); installing {' '.join(PANGO_PACKAGES)}")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(command, check=True)
        import weasyprint
        return weasyprint
    sys.exit(f"docs: WeasyPrint needs Pango ({problem}). Install it with: sudo {' '.join(command)}")


# --- machine and run metadata ----------------------------------------------------------------------

def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
        memory = f"{mem_kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "?"
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory": memory, "platform": platform.platform(),
            "python": platform.python_version()}


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_commit():
    """The commit whose source the PDF shows: the last one that changed anything but the PDF itself (the PDF
    is committed after it is built, so HEAD is then a commit that changed only the PDF)."""
    out = subprocess.run(["git", "log", "-1", "--format=%h", "--", ".", *OUTPUTS_EXCLUDED], cwd=REPO,
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


OUTPUTS_EXCLUDED = [":(exclude)docs/writeup.pdf", ":(exclude)docs/writeup.listings.json"]


def uncommitted():
    """Tracked files with uncommitted changes, the build's own outputs aside."""
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *OUTPUTS_EXCLUDED],
                          cwd=REPO, capture_output=True, text=True).stdout.strip()


# --- step 2: a live run of the real service --------------------------------------------------------

# The course's settings, then as fast as the clients can send: (name, stress_test.py arguments).
STRESS_RUNS = [("course settings", ["-n", "500", "--spacing", "0.05"]),
               ("saturating", ["-n", "400", "--spacing", "0", "--concurrency", "64"])]


def stress_run(name, extra, url, castle_found):
    slug = name.replace(" ", "_")
    report, plot = os.path.join(BUILD, f"stress_{slug}.json"), os.path.join(BUILD, f"stress_{slug}.png")
    args = [sys.executable, "stress_test.py", *extra, "--url", url + "/predict", "--json", report, "--plot", plot,
            "--no-progress"]
    if castle_found:
        args += ["--image", CASTLE]
    say(f"live run: stress test, {name}: {' '.join(extra)}")
    started = time.time()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    shown = " ".join(["python"] + args[1:]).replace(BUILD + "/", "").replace(REPO + "/", "")
    return {"name": name, "command": shown.replace(CASTLE, "castle_image.jpg"), "returncode": done.returncode,
            "stdout": done.stdout, "stderr": done.stderr[-1500:], "report": report, "plot": plot,
            "seconds": round(time.time() - started, 1)}


def live_run(stress=True):
    """Real processes: castle through simple_request.py for every model whose weights are here, one request
    traced through the logs, and the stress test. Returns what the write-up shows."""
    from imgq.testing import Stack
    from imgq.models import resnet50

    out = {"when": now_utc(), "machine": machine(), "castle_found": os.path.exists(CASTLE), "castle": [],
           "resnet50": None, "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    path, why = resnet50.find_weights()  # never downloads
    out["resnet50"] = {"available": path is not None, "why_not": why, "weights": path}
    # Lite0 on both runtimes (LiteRT is what MODEL_RUNTIME=auto serves it with; TensorFlow is the reference),
    # ResNet50 on its auto runtime when a weights file is here.
    runs = [("efficientnet_lite0", "litert"), ("efficientnet_lite0", "tensorflow")] + \
        ([("resnet50", "auto")] if path else [])
    for model, runtime in runs:
        # DEBUG: the worker's per-job lines, for question 7's trace (at INFO a worker logs batches, not jobs).
        with Stack(MODEL=model, MODEL_RUNTIME=runtime, LOG_LEVEL="DEBUG") as stack:
            say(f"live run: starting redis, gunicorn and a {model} worker ({runtime})")
            worker = stack.start_worker(timeout=300)
            url, web = stack.start_web()
            entry = {"model_requested": model, "runtime_requested": runtime}
            ready = next((line for line in worker.log_text().splitlines() if "worker.ready" in line), "")
            m = re.search(r"runtime=(\S+)", ready)
            entry["runtime"] = m.group(1) if m else runtime
            if out["castle_found"]:
                done = subprocess.run([sys.executable, "simple_request.py", CASTLE, "--url", url + "/predict"],
                                      cwd=REPO, capture_output=True, text=True, timeout=120)
                entry.update(command=f"python simple_request.py castle_image.jpg --url {url}/predict",
                             returncode=done.returncode, stdout=done.stdout, stderr=done.stderr[-2000:])
                top = re.search(r"^1\. (\S+): ([0-9.]+)", done.stdout, re.M)
                if top:
                    entry.update(top1=top.group(1), top1_probability=float(top.group(2)))
                web_log = web.log_text()
                m = re.findall(r"request\.done .*?id=(\w+).*? model=(\S+)", web_log)
                if m:
                    job_id, served_by = m[-1]
                    entry.update(id=job_id, model=served_by)
                    if "trace" not in out:  # one trace is enough
                        out["trace"] = {
                            "id": job_id,
                            "web": [line for line in web_log.splitlines() if job_id in line],
                            "worker": [line for line in worker.log_text().splitlines() if job_id in line],
                            "worker_ready": ready or None}
                out["castle"].append(entry)
            if model == "efficientnet_lite0" and runtime == "litert" and stress:
                out["stress"] = [stress_run(name, extra, url, out["castle_found"]) for name, extra in STRESS_RUNS]
                out["stress_setup"] = {"model": model, "runtime": entry["runtime"], "web_processes": 1, "workers": 1,
                                       "log_level": "DEBUG"}
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


# --- step 4: the tests that show the fixes ---------------------------------------------------------

def run_tests():
    started = time.time()
    # The tests keep their logs for the figures (the kill-a-worker timeline) in docs/build/evidence.
    env = dict(os.environ, IMGQ_EVIDENCE_DIR=os.path.join(BUILD, "evidence"))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *EVIDENCE_TESTS],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    outcomes = {}
    for line in done.stdout.splitlines():
        m = re.match(r"(PASSED|FAILED|ERROR|SKIPPED)\s+(\S+)", line)
        if m:
            outcomes[m.group(2)] = m.group(1)
    summary = next((line.strip("= ") for line in reversed(done.stdout.splitlines()) if " in " in line), "")
    return {"when": now_utc(), "machine": machine(), "returncode": done.returncode, "outcomes": outcomes,
            "summary": summary, "seconds": round(time.time() - started, 1)}



RESULT_FILES = {  # inline [[name: path]] sources and generated tables: the benchmark runs' own files
    "notify": "bench/results/notifications.json",
}


def course_stress(castle_found):
    """The course's stress-test loop and ours against the same slow stand-in service (question 6)."""
    from imgq.testing import Stack
    image = CASTLE if castle_found else None
    with Stack(MODEL="standin", STANDIN_LATENCY_MS=1500, BATCH_SIZE=8) as stack:
        stack.start_worker()
        url, _ = stack.start_web()
        if image is None:  # the stand-in accepts any image: make one
            image = os.path.join(stack.workdir, "grey.png")
            from PIL import Image
            Image.new("RGB", (64, 64), (128, 128, 128)).save(image)
        done = subprocess.run([sys.executable, "-m", "docs.course_stress_demo", url + "/predict",
                               "--image", image], capture_output=True, text=True, timeout=300, cwd=REPO)
        if done.returncode != 0:
            raise RuntimeError(f"course_stress_demo.py failed:\n{done.stderr[-2000:]}")
        out = json.loads(done.stdout)
        from docs.course_stress_demo import drained
        drained(url + "/predict")
        report = os.path.join(BUILD, "course_stress_ours.json")
        ours = subprocess.run([sys.executable, "stress_test.py", "-n", "40", "--spacing", "0.05", "--url",
                               url + "/predict", "--image", image, "--json", report, "--no-progress"],
                              capture_output=True, text=True, timeout=300, cwd=REPO)
        with open(report) as f:
            out["ours"] = dict(json.load(f), exit_code=ours.returncode)
    return dict(out, when=now_utc(), machine=machine())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="reuse docs/build/*.json from the last build; run nothing")
    p.add_argument("--no-tests", action="store_true", help="do not run the evidence tests")
    p.add_argument("--no-stress", action="store_true", help="skip the stress test runs in the live run")
    p.add_argument("--keep-going", action="store_true",
                   help="exit 0 even when a step failed (the PDF shows the failure in place of its figures)")
    p.add_argument("--draft", action="store_true", help="build from uncommitted changes (the title page says so)")
    p.add_argument("--check", action="store_true", help="only check that the committed PDF is current")
    p.add_argument("--out", default=os.path.join(DOCS, "writeup.pdf"))
    args = p.parse_args(argv)
    if args.check:
        problems = check_current()
        for problem in problems:
            print(f"docs: {problem}", file=sys.stderr)
        return 1 if problems else 0
    dirty = uncommitted()
    if dirty and not args.draft:
        sys.exit("docs: uncommitted changes; the PDF is built from a commit (commit first, or --draft):\n" + dirty)
    started = time.time()
    weasyprint = weasyprint_module()
    os.makedirs(BUILD, exist_ok=True)
    failed = []

    from docs import diagrams
    say("diagrams")
    figures = diagrams.build_all(os.path.join(BUILD, "figures"))

    def step(name, fn, skip):
        path = os.path.join(BUILD, f"{name}.json")
        if not skip:
            say(f"{name} ...")
            t = time.time()
            try:
                value = fn()
            except Exception as exc:  # the write-up says what failed instead of showing stale or no numbers
                say(f"{name} FAILED: {exc!r}")
                failed.append(name)
                value = {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}", "when": now_utc(), "machine": machine()}
            with open(path, "w") as f:
                json.dump(value, f, indent=1)
            say(f"{name}: {time.time() - t:.0f} s")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        return None

    live = step("live", lambda: live_run(not args.no_stress), args.fast)

    def race():
        done = subprocess.run([sys.executable, "-m", "docs.race_demo"], capture_output=True, text=True,
                              timeout=300, cwd=REPO)
        if done.returncode != 0:
            raise RuntimeError(f"race_demo.py failed:\n{done.stderr[-2000:]}")
        return dict(json.loads(done.stdout), when=now_utc(), machine=machine())
    race_result = step("race", race, args.fast)
    stress_demo = step("course_stress", lambda: course_stress(os.path.exists(CASTLE)), args.fast)
    tests = step("tests", run_tests, args.fast or args.no_tests)
    if tests and tests.get("returncode") not in (0, None):
        failed.append("tests")

    sources = {}
    for name, relpath in RESULT_FILES.items():
        path = os.path.join(REPO, relpath)
        if os.path.exists(path):
            with open(path) as f:
                sources[name] = dict(json.load(f), _path=relpath)
    sources["computed"] = computed_facts(sources)
    evidence_path = os.path.join(BUILD, "evidence", "sigkill_mid_batch.json")
    evidence = None
    if os.path.exists(evidence_path):
        with open(evidence_path) as f:
            evidence = json.load(f)
    say("plots")
    figures.update(draw_plots(sources, race_result, evidence))
    for run in (live or {}).get("stress") or []:  # question 6 shows what our stress test drew
        if os.path.exists(run.get("plot", "")):
            figures["stress_" + run["name"].replace(" ", "_")] = run["plot"]
    if os.path.exists(CASTLE):  # question 3 shows the image: a small copy made here, never committed
        from PIL import Image
        thumb = os.path.join(BUILD, "figures", "castle_thumb.jpg")
        with Image.open(CASTLE) as image:
            image.thumbnail((320, 320))
            image.convert("RGB").save(thumb, quality=85)
        figures["castle_thumb"] = thumb
    commit = git_commit() + (" + uncommitted changes (a draft)" if dirty else "")
    meta = {"when": now_utc(), "commit": commit, "machine": machine(), "failed_steps": failed,
            "how": "python -m docs.build --fast" if args.fast else "make docs", "reused": args.fast}
    results = Results(live, race_result, tests, sources, meta, stress_demo=stress_demo, figures=figures)

    with open(os.path.join(DOCS, "writeup.md"), encoding="utf-8") as f:
        source = f.read()
    listings.clear()
    markdown_text, blocks = resolve(source, results, figures)
    page = to_html(markdown_text, blocks, "Keras + Redis + Flask image classification queue")
    tables, captions = page.count("<table"), page.count('<p class="tcap">')
    if tables != captions:
        sys.exit(f"docs: {tables} tables but {captions} captions: every table needs one (a 'Table: ...' line)")
    html_path = os.path.join(BUILD, "writeup.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(page)
    say("PDF (WeasyPrint)")
    weasyprint.HTML(string=page, base_url=BUILD).write_pdf(args.out)
    with open(LISTINGS, "w") as f:
        json.dump({"commit": git_commit(), "draft": bool(dirty), "listings": listings}, f, indent=1)
    say(f"{os.path.relpath(args.out, REPO)} written in {time.time() - started:.0f} s")
    if failed:
        say(f"FAILED steps: {', '.join(failed)} (the PDF shows each failure in place of its figures)")
        return 0 if args.keep_going else 1
    return 0


def check_current():
    """Why the committed PDF is not current, if it is not: a listing whose lines changed, or .py files that changed
    since the commit it was built from."""
    problems = listing_problems()
    if problems and problems[0].endswith("run make docs") and "missing" in problems[0]:
        return problems
    with open(LISTINGS) as f:
        built = json.load(f)
    changed = subprocess.run(["git", "diff", "--name-only", built["commit"], "HEAD", "--", "*.py"], cwd=REPO,
                             capture_output=True, text=True)
    if changed.returncode != 0:
        problems.append(f"commit {built['commit']} is not in this repository's history")
    elif changed.stdout.strip():
        problems.append(f".py files changed since {built['commit']}, the commit the PDF shows: "
                        f"{', '.join(changed.stdout.split())}")
    return problems


def listing_problems():
    """The committed PDF's listings that no longer match the source (docs/writeup.listings.json), and a PDF built
    as a draft."""
    if not os.path.exists(LISTINGS):
        return ["docs/writeup.listings.json is missing: run make docs"]
    with open(LISTINGS) as f:
        built = json.load(f)
    problems = ["the PDF was built from uncommitted changes (--draft)"] if built.get("draft") else []
    for item in built["listings"]:
        try:
            first, digest = listing_lines(item["file"], item["name"], item.get("from"), item.get("to"))
        except SystemExit as exc:
            problems.append(f"{item['file']}::{item['name']}: {exc}")
            continue
        if (first, digest) != (item["first"], item["sha1"]):
            problems.append(f"{item['file']}::{item['name']}: the listing (lines {item['first']}-) no longer matches "
                            f"the source (now from line {first}): run make docs")
    return problems


def computed_facts(sources):
    """Numbers the write-up computes rather than measures: a job's size from the real encoder, the UUID
    collision bound, and figures derived from the result files."""
    import numpy as np
    from imgq.jobs import message
    facts = {"job_bytes": len(message.make_job(message.new_id(), np.zeros((224, 224, 3), dtype=np.uint8), 30.0))}
    n = 10 ** 9  # a billion requests
    facts["uuid_n"] = "a billion (10⁹)"
    mantissa, exponent = f"{n * n / 2 ** 123:.1e}".split("e")
    facts["uuid_p"] = f"{mantissa} × 10{str(int(exponent)).translate(str.maketrans('-0123456789', '⁻⁰¹²³⁴⁵⁶⁷⁸⁹'))}"
    rows = ((sources.get("notify") or {}).get("sweep") or {}).get("rows") or []
    longest = max((r["standin_latency_s"] for r in rows), default=None)
    at = {r["mode"]: r for r in rows if r["standin_latency_s"] == longest}
    if "notifications" in at and at["notifications"]["wait_ms_p50"]:
        facts["long_wait_s"] = round(at["notifications"]["wait_ms_p50"] / 1000, 1)
        facts["long_wait"] = {key: round(at[mode]["commands_per_request"], 1) for key, mode in (
            ("notifications", "notifications"), ("notifications_1s_backup", "notifications, 1 s backup"),
            ("polling_025", "polling 0.25 s"), ("polling_1", "polling 1 s")) if mode in at}
    modes = (((sources.get("notify") or {}).get("cdf") or {}).get("modes")) or {}
    if modes:
        median = lambda mode: float(np.median([r["latency_ms"]["p50"] for r in modes[mode]["repeats"]]))  # noqa: E731
        facts["p50_ms"] = {"notifications": round(median("notifications")),
                           "polling_025": round(median("polling 0.25 s")), "polling_1": round(median("polling 1 s"))}
    return facts


def draw_plots(sources, race, evidence):
    """Measured figures from the result files (docs/plots.py); a missing result draws nothing."""
    from docs import plots
    folder = os.path.join(BUILD, "figures")
    notify = sources.get("notify")
    drawn = {"notify_cdf": plots.notify_cdf(notify, os.path.join(folder, "notify_cdf.svg")),
             "notify_sweep": plots.notify_sweep(notify, os.path.join(folder, "notify_sweep.svg")),
             "lost_timeline": plots.lost_timeline(notify, os.path.join(folder, "lost_timeline.svg")),
             "race_bars": plots.race_bars(race if race and "error" not in race else None,
                                          os.path.join(folder, "race_bars.svg")),
             "kill_timeline": plots.kill_timeline(evidence, os.path.join(folder, "kill_timeline.svg"))}
    return {name: path for name, path in drawn.items() if path}


if __name__ == "__main__":
    sys.exit(main())

"""`make tune`: measure the worker's shapes on this machine and write the winner where `make run` reads it.

    python -m bench.tune                  # about 6 minutes: writes tuned.env and bench/results/tune.json
    python -m bench.tune --quick          # a minute and a half: shorter points, 1 and 16 clients

Where it sits: outside the service, like bench/tax.py, whose stack it starts the same way (imgq/testing.py:
redis-server, gunicorn with WEB_PROCESSES processes, the workers, MODEL as make run would serve unless --model), with
the same closed-loop clients (bench/load.py) sending the same upload (castle_image.jpg unless --image).

Why: a default tuned on one CPU lost on another (issue 21: lanes and WORKERS trade differently on Intel and AMD),
and this machine is the one that will serve. So the candidates run in turns (round 1: A B C, round 2: A B C), each
with a fresh web server and workers, at each client count; a candidate's score in a round is the geometric mean of
its requests/s over the client counts (each count weighs the same, whatever its size). A candidate replaces the
defaults only if it beat them by MARGIN or more in every round, failed no request and gave every answer the
defaults gave; otherwise the defaults stay, and the file says so. A round is compared only with itself: a busy
spell of the machine hits the candidates of one round alike. When the defaults themselves failed a request, the
figures are not trusted and the tuned file is left as it was (exit 1); a candidate that failed one only loses.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Any

from bench import tax
from bench.run import cpu_model
from bench.tax import CASTLE, RESULTS
from imgq import settings, tuning
from imgq.testing import Stack

MARGIN = 0.03  # ahead by less than this in a round is within this shared machine's noise (issue 21's A/B runs)

# name → the settings it changes (what tuned.env will say). WORKERS=2 gets MODEL_THREADS = cores // 2 per worker,
# as `make run` gives it (launcher.child_env).
CANDIDATES: dict[str, dict[str, str]] = {
    "defaults": {},
    "no lanes": {"MODEL_LANES": "0"},
    "2 workers": {"WORKERS": "2"},
}


def cores() -> int:
    return len(os.sched_getaffinity(0))


def start(stack: Stack, chosen: dict[str, str]) -> tuple[str, dict[str, list[int]], list[Any]]:
    workers = int(chosen.get("WORKERS", 1))
    worker_env = {k: v for k, v in chosen.items() if k != "WORKERS"}
    if workers > 1 and "MODEL_THREADS" not in worker_env:
        worker_env["MODEL_THREADS"] = str(max(1, cores() // workers))
    return tax.start_service(stack, worker_env, {}, workers, processes=settings.WEB_PROCESSES)


def point(url: str, upload: tuple[bytes, str], clients: int, duration: float, warmup: float,
          procs: dict[str, list[int]]) -> dict[str, Any]:
    """One client count, measured as `make bench-tax` measures it; what the choice and tune.json keep of it."""
    measured = tax.measure(url, upload, clients, duration, warmup, procs)
    return {"clients": clients, "requests_per_s": measured["requests_per_s"], "p95_ms": measured["p95_ms"],
            "cpu_ms_per_request": measured["service_cpu_ms_per_request"], "failed": measured["failed"],
            "answers": measured["answers"]}


def score(points: list[dict[str, Any]]) -> float:
    """The geometric mean of requests/s over the client counts (0 when any count answered nothing)."""
    rates = [p["requests_per_s"] for p in points]
    if not rates or min(rates) <= 0:
        return 0.0
    return math.exp(sum(math.log(r) for r in rates) / len(rates))


def choose(runs: dict[str, list[list[dict[str, Any]]]], margin: float = MARGIN) -> tuple[str, dict[str, Any]]:
    """(the winner, why) from runs[candidate][round] = that round's points. Each round's score is set beside the
    defaults' score in the same round; the winner is the candidate whose smallest gain over the rounds is the
    largest, if that gain is at least `margin` and it failed nothing and answered as the defaults did; else
    "defaults"."""
    base = runs["defaults"]
    expected = sorted({a for rnd in base for p in rnd for a in p["answers"]})
    why: dict[str, Any] = {}
    best, best_gain = "defaults", margin
    for name, rounds in runs.items():
        gains = [score(rnd) / score(ref) - 1 if score(ref) else 0.0 for rnd, ref in zip(rounds, base)]
        failed = sum(p["failed"] for rnd in rounds for p in rnd)
        answers = sorted({a for rnd in rounds for p in rnd for a in p["answers"]})
        why[name] = {"score_by_round": [round(score(rnd), 1) for rnd in rounds],
                     "gain_by_round": [round(g, 3) for g in gains], "failed": failed, "answers": answers}
        if name == "defaults" or failed or answers != expected or not gains:
            continue
        if min(gains) >= best_gain:
            best, best_gain = name, min(gains)
    return best, why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 16 clients, 4 s points")
    parser.add_argument("--clients", default=None, help="client counts (default 1,4,16,64)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per point (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="turns of the candidates (default 2)")
    parser.add_argument("--image", default=CASTLE, help="the upload (default ../shared/castle_image.jpg)")
    parser.add_argument("--model", default=settings.MODEL, help="MODEL to tune for (default: MODEL, as make run "
                                                                  "would serve)")
    parser.add_argument("--out", default=None, help="the tuned file (default TUNED_ENV or tuned.env)")
    parser.add_argument("--results", default=os.path.join(RESULTS, "tune.json"), help="the measurements")
    args = parser.parse_args(argv)
    clients = [int(c) for c in (args.clients or ("1,16" if args.quick else "1,4,16,64")).split(",")]
    duration = args.duration or (4.0 if args.quick else 8.0)
    warmup = 1.0 if args.quick else 2.0
    out = args.out or tuning.path()
    why = tuning.unwritable(out)
    if why:
        print(f"tune: cannot write the tuned file {out} ({why}); set TUNED_ENV or --out to a file", file=sys.stderr)
        return 2
    with open(args.image, "rb") as f:
        upload = (f.read(), os.path.basename(args.image))
    # The tune measures the candidates as they are: a tunable (or TF_INTRA_OP_THREADS, MODEL_THREADS' older name)
    # already in this environment would bend them all.
    for name in (*tuning.TUNABLE, "TF_INTRA_OP_THREADS"):
        if os.environ.pop(name, None) is not None:
            print(f"tune: {name} from the environment is not used while tuning", flush=True)
    machine = {"cpu_model": cpu_model(), "cpus": cores(), "platform": platform.platform(),
               "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    print(f"tune: {machine['cpu_model']}, {machine['cpus']} CPUs; {', '.join(CANDIDATES)} in turns, {args.rounds} "
          f"rounds, {duration:g} s at {', '.join(map(str, clients))} clients", flush=True)
    runs: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in CANDIDATES}
    with Stack(MODEL=args.model) as stack:
        for r in range(args.rounds):
            for name, chosen in CANDIDATES.items():
                url, procs, started = start(stack, chosen)
                points = [point(url, upload, c, duration, warmup, procs) for c in clients]
                for proc in started:
                    stack.stop(proc)
                runs[name].append(points)
                print(f"round {r + 1} {name:10} " + "  ".join(
                    f"c={p['clients']}: {p['requests_per_s']} req/s" for p in points)
                    + f"  score {score(points):.1f}" + (f"  FAILED {sum(p['failed'] for p in points)}"
                                                        if any(p["failed"] for p in points) else ""), flush=True)
    winner, why = choose(runs)
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report = {"command": "make tune" + (" (--quick)" if args.quick else ""), "date": date, "machine": machine,
              "model": args.model, "upload": os.path.basename(args.image), "clients": clients,
              "duration_s": duration, "warmup_s": warmup, "rounds": args.rounds, "margin": MARGIN,
              "candidates": CANDIDATES, "runs": runs, "why": why, "winner": winner}
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(report, f, indent=1)
    if why["defaults"]["failed"]:
        print(f"tune: the defaults failed {why['defaults']['failed']} requests, so nothing here can be trusted; "
              f"{out} not written. See {args.results}", file=sys.stderr)
        return 1
    scores = "; ".join(f"{name} {' / '.join(map(str, w['score_by_round']))}" for name, w in why.items())
    tuning.write(out, CANDIDATES[winner], [
        f"Written by `make tune` {date} on {machine['cpu_model']} ({machine['cpus']} CPUs), model {args.model}.",
        f"Score per round (geometric mean of req/s over client counts {', '.join(map(str, clients))}): {scores}.",
        f"Chosen: {winner}" + ("" if winner != "defaults" else
                              f" (no candidate was ahead by {MARGIN:.0%} in every round without a failure)") + ".",
        "`make run` applies the lines below where the environment does not set the same name.",
        "Delete this file to run on the defaults; run `make tune` again after a change of machine.",
    ], model=args.model)
    setting = " ".join(f"{k}={v}" for k, v in CANDIDATES[winner].items())
    print(f"tune: chosen {winner}{f' ({setting})' if setting else ''}; wrote {out} and {args.results}", flush=True)
    return 1 if any(w["failed"] for w in why.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

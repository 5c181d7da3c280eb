"""CPU per request of each process of the queue path at saturation: web, worker, Redis (and the client).

    python -m bench.overhead                                  # MODEL=standin, instant, castle uploads, 20 s
    python -m bench.overhead --model efficientnet_lite0 --duration 30

Where it sits: outside the service, like bench/run.py. It starts its own redis-server, one gunicorn (2
processes, the default) and one worker (imgq/testing.py), drives them with 2 x BATCH_SIZE closed-loop clients
(bench/load.py) and divides each process's CPU seconds (Proc.cpu_seconds: user + system, children included)
by the requests answered in the window. With the instant stand-in the worker's figure is almost all queue
path (the stand-in's own work is one mean over the batch); with a real model, `--model-cpu` also measures
the model's own call alone (same batch size, in this process, after the stack is stopped) and subtracts it,
so "outside model" is web + worker − model + Redis per request. `--ratio` measures the model's images/s
alone first (bench/model_speed.py, as bench/run.py does) and prints req/s over it.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from bench import load
from imgq.testing import Stack

HERE = os.path.dirname(os.path.abspath(__file__))

CASTLE = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "castle_image.jpg"))


def model_cpu_ms_per_image(name, batch_size, repeats=5):
    """Process CPU (all of TensorFlow's threads) of one compiled call on a full batch, per image."""
    import numpy as np
    from imgq import models
    model = models.load_model(name)
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, *model.input_size, 3), dtype=np.uint8)
    model.predict(batch)
    started = time.process_time()
    for _ in range(repeats):
        model.predict(batch)
    return (time.process_time() - started) * 1000 / (repeats * batch_size)


def model_images_per_s(name, batch_size):
    """The model alone, in a process of its own (bench/model_speed.py), as bench/run.py measures it."""
    done = subprocess.run([sys.executable, "-m", "bench.model_speed", name, "--batch-size",
                           str(batch_size), "--repeats", "5"], cwd=os.path.dirname(HERE), capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"]


def measure(model, image, duration, batch_size, web_processes, extra_env):
    upload = (open(image, "rb").read(), os.path.basename(image))
    clients = 2 * batch_size
    env = dict(MODEL=model, STANDIN_LATENCY_MS=0, BATCH_SIZE=batch_size, **extra_env)
    with Stack(**env) as stack:
        worker = stack.start_worker(timeout=300)
        url, web = stack.start_web(processes=web_processes)
        redis_proc = stack.redis_server.proc
        predict = url + "/predict"
        load.run(predict, upload, total=3 * clients, concurrency=clients)  # warm: connections, shapes
        procs = {"web": web, "worker": worker, "redis": redis_proc}
        client = stack.redis()
        stats0 = client.info("stats")
        before = {k: p.cpu_seconds() for k, p in procs.items()}
        result = load.run(predict, upload, duration=duration, concurrency=clients)
        after = {k: p.cpu_seconds() for k, p in procs.items()}
        stats1 = client.info("stats")
        stack.check_alive()
    ok = [r for r in result["records"] if r["status"] == "ok"]
    n = max(len(ok), 1)
    per = {k: round((after[k] - before[k]) * 1000 / n, 3) for k in procs}
    batches = [r["timings"]["batch"] for r in ok if r.get("timings")]
    # Each answer carries its batch's model time and size: summing time/size over answers counts every
    # batch's model call once, so this is the share of the window in which the model was running.
    model_s = sum(r["timings"]["inference_ms"] / r["timings"]["batch"] for r in ok if r.get("timings")) / 1000
    return {"model": model, "image": os.path.basename(image), "duration_s": round(result["elapsed_s"], 1),
            "clients": clients, "requests_ok": len(ok), "requests_failed": len(result["records"]) - len(ok),
            "req_per_s": round(len(ok) / result["elapsed_s"], 1),
            "mean_batch": round(sum(batches) / max(len(batches), 1), 1),
            "model_busy": round(model_s / result["elapsed_s"], 3),
            "redis_bytes_per_request": round(sum(stats1[k] - stats0[k] for k in (
                "total_net_input_bytes", "total_net_output_bytes")) / n),
            "cpu_ms_per_request": dict(per, client=round(result["client_cpu_s"] * 1000 / n, 3),
                                       service=round(sum(per.values()), 3)),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="standin")
    parser.add_argument("--image", default=CASTLE)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--web-processes", type=int, default=2)
    parser.add_argument("--model-cpu", action="store_true", help="also measure the model alone and subtract it")
    parser.add_argument("--ratio", action="store_true",
                        help="also measure the model alone (images/s, before the load) and print req/s over it")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for every process")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    extra = dict(e.split("=", 1) for e in args.env)
    alone = model_images_per_s(args.model, args.batch_size) if args.ratio and args.model != "standin" else None
    out = measure(args.model, args.image, args.duration, args.batch_size, args.web_processes, extra)
    cpu = out["cpu_ms_per_request"]
    if alone:
        out["model_alone_images_per_s"] = alone
        out["saturation_ratio"] = round(out["req_per_s"] / alone, 3)
    if args.model_cpu and args.model != "standin":
        out["model_alone_cpu_ms_per_image"] = round(model_cpu_ms_per_image(args.model, args.batch_size), 3)
        out["outside_model_ms"] = round(cpu["service"] - out["model_alone_cpu_ms_per_image"], 3)
    print(f"{out['model']}, {out['image']}, {out['clients']} clients, {out['duration_s']} s: "
          f"{out['req_per_s']} req/s ({out['requests_ok']} ok, {out['requests_failed']} failed), "
          f"mean batch {out['mean_batch']}, model busy {out['model_busy']:.0%} of the time")
    print("CPU ms per request: " + ", ".join(f"{k} {v}" for k, v in cpu.items()) +
          f"; Redis bytes per request {out['redis_bytes_per_request']:,}")
    if alone:
        print(f"model alone {alone} images/s → saturation ratio {out['saturation_ratio']}")
    if "outside_model_ms" in out:
        print(f"model alone {out['model_alone_cpu_ms_per_image']} ms/image → outside the model "
              f"{out['outside_model_ms']} ms/request")
    print(f"load average {out['load_average']} (other work on the machine inflates every figure)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

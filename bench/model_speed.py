"""The model's own limit, measured alone in a process of its own (no web server, no queue, no client).

    python -m bench.model_speed efficientnet_lite0 --batch-size 32 --repeats 5 [--runtime litert] [--threads 1]
        → one JSON line

bench/run.py and bench/sweep.py run this as a subprocess so TensorFlow never loads in the benchmark's own
process and the model has the machine to itself. Uses raw_speed (the model's predict on random uint8
batches) on the runtime asked for (default MODEL_RUNTIME) with MODEL_THREADS threads.
"""
import argparse
import json
import time

import numpy as np

from imgq import models, settings


def raw_speed(model, batch_size=None, repeats=5):
    """The model's own limit, without queue or web: median batch-1 latency and images/s at batch_size.

    Random uint8 input; returns {"model", "batch_1_ms", "batch_size", "batch_ms", "images_per_s"}.
    """
    batch_size = batch_size or settings.BATCH_SIZE
    rng = np.random.default_rng(0)
    height, width = model.input_size

    def median_seconds(n):
        batch = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
        model.predict(batch)  # untimed: first call of a new batch shape may allocate
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.predict(batch)
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    one, many = median_seconds(1), median_seconds(batch_size)
    return {"model": model.name, "batch_1_ms": round(one * 1000, 2), "batch_size": batch_size,
            "batch_ms": round(many * 1000, 2), "images_per_s": round(batch_size / many, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runtime", default=None, help="auto, litert or tensorflow (default: MODEL_RUNTIME)")
    parser.add_argument("--threads", type=int, default=None, help="MODEL_THREADS (default: the setting)")
    args = parser.parse_args()
    if args.threads is not None:
        settings.MODEL_THREADS = args.threads  # before the model loads: TensorFlow fixes its pools at first use
    started = time.perf_counter()
    model = models.load_model(args.model, runtime=args.runtime)
    load_s = time.perf_counter() - started
    speed = raw_speed(model, args.batch_size, args.repeats)
    print(json.dumps(dict(speed, runtime=model.runtime, threads=model.threads, load_s=round(load_s, 2),
                          repeats=args.repeats)))


if __name__ == "__main__":
    main()

"""The model's own limit, measured alone in a process of its own (no web server, no queue, no client).

    python bench/model_speed.py efficientnet_lite0 --batch-size 32 --repeats 5 [--runtime litert] [--threads 1]
        → one JSON line

bench/run.py and bench/sweep.py run this as a subprocess so TensorFlow never loads in the benchmark's own
process and the model has the machine to itself. Uses models.raw_speed (the model's predict on random uint8
batches) on the runtime asked for (default MODEL_RUNTIME) with MODEL_THREADS threads.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
import settings  # noqa: E402


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
    speed = models.raw_speed(model, args.batch_size, args.repeats)
    print(json.dumps(dict(speed, runtime=model.runtime, threads=model.threads, load_s=round(load_s, 2),
                          repeats=args.repeats)))


if __name__ == "__main__":
    main()

"""Model worker (the course's run_model_server.py): Redis queue → batch → model → results.

The loop itself is imgq/worker/loop.py; this entry point checks the settings (a wrong one: one line on
stderr, exit 2), loads the model and runs one worker until SIGTERM / SIGINT. `--help` starts nothing.
"""
import argparse
import signal
import sys
import threading

from imgq import models, settings
from imgq.observe.logutil import log
from imgq.worker.loop import Worker

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Model worker: takes batches of jobs from the Redis queue, classifies them, writes the results.",
        epilog="Every setting is an environment variable (docs/configuration.md), e.g. "
               "MODEL=efficientnet_lite0 BATCH_SIZE=16 REDIS_URL=redis://127.0.0.1:6379/0 python run_model_server.py")
    return parser.parse_args(argv)


def main(argv=None):
    parse_args(argv)  # before anything starts: --help prints and exits here
    settings.check()
    # Handlers first: a SIGTERM during the (slow) model load must still end cleanly.
    stop_early = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_early.set())
    signal.signal(signal.SIGINT, lambda *_: stop_early.set())
    try:
        model = models.load_model()
    except models.ModelUnavailable as exc:
        # One line that says what is wrong; make run's launcher stops everything on it (it cannot come right
        # by restarting).
        log("worker.cannot_start", level="ERROR", error=str(exc))
        return 2
    worker = Worker(model)
    worker.install_signal_handlers()
    if stop_early.is_set():
        log("worker.stopped", reason="signal during model load")
        return 0
    refusal = worker.wait_for_redis()
    if refusal:  # a Redis that evicts: one line, exit 2 (make run's launcher stops everything on it)
        log("worker.cannot_start", level="ERROR", error=refusal)
        return 2
    if worker.stopping.is_set():
        log("worker.stopped", reason="signal while waiting for Redis")
        return 0
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peer 3: Ray Serve with @serve.batch, 2 replicas.

Where it sits: outside the service, started by bench/peers/run.py as
`python ray_app.py PORT MAX_BATCH_SIZE BATCH_WAIT_TIMEOUT_S REPLICAS TEMP_DIR`. This driver starts a
private local Ray cluster (num_cpus = the machine's cores, no dashboard, usage stats off via
RAY_USAGE_STATS_ENABLED=0 from the runner, its files under TEMP_DIR), Serve's HTTP proxy on PORT, and the
deployment. A replica parses the form and prepares the pixels in __call__, then awaits a @serve.batch
method that runs the project's model once per batch of up to MAX_BATCH_SIZE images gathered within
BATCH_WAIT_TIMEOUT_S. On SIGTERM/SIGINT it shuts Serve and Ray down, so no Ray process outlives it
(the runner also kills any process of the run that is still alive afterwards).
"""
import os
import signal
import sys
import threading

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

import common

PORT, MAX_BATCH, WAIT_S, REPLICAS, TEMP_DIR = sys.argv[1:6]


# Serve admits at most max_ongoing_requests per replica (default 5): below max_batch_size it would cap
# every batch at that, so the queue in front of the batcher is allowed to hold a few batches.
@serve.deployment(num_replicas=int(REPLICAS), ray_actor_options={"num_cpus": 1},
                  max_ongoing_requests=4 * int(MAX_BATCH))
class Classifier:
    def __init__(self):
        self.model = common.load_model()

    @serve.batch(max_batch_size=int(MAX_BATCH), batch_wait_timeout_s=float(WAIT_S))
    async def classify(self, images):
        probabilities = self.model.predict(np.stack(images))
        return [common.answer(self.model, p) for p in probabilities]

    async def __call__(self, request: Request):
        form = await request.form()
        upload = form.get("image")
        if upload is None or not hasattr(upload, "read"):
            return JSONResponse(common.error("no 'image' file in the form"), status_code=400)
        try:
            pixels = common.prepare(await upload.read(), self.model)
        except common.BadImage as exc:
            return JSONResponse(common.error(str(exc)), status_code=exc.status)
        return JSONResponse(await self.classify(pixels))


def main():
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=TEMP_DIR, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    serve.start(http_options={"host": "127.0.0.1", "port": int(PORT)})
    serve.run(Classifier.bind(), route_prefix="/predict")  # returns once every replica is up
    print(f"{common.READY} serve replicas={REPLICAS}", flush=True)

    stop = threading.Event()
    # After ray.init, which installs a SIGTERM handler of its own in the driver.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
    print("ray app stopped", flush=True)


if __name__ == "__main__":
    main()

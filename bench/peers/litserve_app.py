"""Peer 2: LitServe with its own dynamic batching (max_batch_size, batch_timeout), 2 inference workers.

Where it sits: outside the service, started by bench/peers/run.py as
`python litserve_app.py PORT MAX_BATCH_SIZE BATCH_TIMEOUT_S WORKERS`. LitServe's API server (uvicorn) parses
the multipart form and hands it to an inference worker process over a queue; the worker decodes each
upload (decode_request), stacks up to max_batch_size of them that arrived within batch_timeout, runs the
project's model once per batch, and answers each request.
"""
import sys

import litserve as ls
import numpy as np
from fastapi import HTTPException, Request

import common


class Classifier(ls.LitAPI):
    def setup(self, device):
        self.model = common.load_model()

    def decode_request(self, request: Request):  # a Request annotation makes LitServe pass the parsed form
        upload = request.get("image") if hasattr(request, "get") else None
        if upload is None or not hasattr(upload, "file"):
            raise HTTPException(400, "no 'image' file in the form")
        upload.file.seek(0)
        try:
            return common.prepare(upload.file.read(), self.model)
        except common.BadImage as exc:
            raise HTTPException(exc.status, str(exc))

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, batch):
        return self.model.predict(batch)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probabilities):
        return common.answer(self.model, probabilities)


def main(port, max_batch_size, batch_timeout, workers):
    api = Classifier(max_batch_size=int(max_batch_size), batch_timeout=float(batch_timeout))
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=int(workers), timeout=60,
                          track_requests=False)
    # num_api_servers left at its default: one uvicorn API process per inference worker.
    server.run(host="127.0.0.1", port=int(port), generate_client_file=False,
               log_level="warning")


if __name__ == "__main__":
    main(*sys.argv[1:5])

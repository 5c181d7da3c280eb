"""What every peer app shares: the project's own model and image preparation.

Where it sits: outside the service, in the peers benchmark (bench/peers/run.py). Each peer app (Flask in
the request, LitServe, Ray Serve) imports this instead of loading a model of its own, so it serves the
same model on the same runtime as the service's worker: models.load_model() reads MODEL, MODEL_RUNTIME,
TF_INTRA_OP_THREADS ... from the environment exactly as run_model_server.py does, and
images.prepare_image() turns the upload into the same uint8 224x224x3 pixels as the service's web server.
The answer has the service's JSON shape ({"success", "model", "predictions": [{"label", "probability"}]}),
so bench/load.py reads every system's top-1 label the same way.
"""
import os

import numpy as np

from imgq.web import images
from imgq import models
from imgq import settings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BadImage = images.BadImage
READY = "PEER READY"  # the runner waits for this line in the app's log


def load_model():
    """The service's model (settings.MODEL, its runtime), warmed up; says so on stdout for the runner."""
    model = models.load_model()
    print(f"{READY} model={name(model)} pid={os.getpid()}", flush=True)
    return model


def name(model):
    return getattr(model, "name", None) or settings.MODEL


def prepare(data, model):
    """Upload bytes → uint8 (h, w, 3); raises BadImage (with .status, 400 or 413) like the service."""
    return images.prepare_image(data, model.input_size)


def answer(model, probabilities, top=5):
    """The service's answer for one image's probabilities."""
    best = np.argsort(probabilities)[::-1][:top]
    return {"success": True, "model": name(model),
            "predictions": [{"label": model.labels[i], "probability": round(float(probabilities[i]), 4)}
                            for i in best]}


def error(message):
    return {"success": False, "error": message}

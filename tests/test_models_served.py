"""Several models in one deployment (MODELS=name=source,...): each its own queue and workers, requests routed
by name over /predict?model=, Open Inference Protocol v2 (the real tritonclient) and TF Serving REST, /healthz
listing each, and one model's worker killed under load while the other keeps answering."""
import concurrent.futures
import os
import signal

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from conftest import CASTLE, wait_until
from test_model_folder import SOLIDS, png

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning",
                                        "ignore:You are saving your model as an HDF5 file")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The colour classifier of docs/own_model_example.py, trained here (seconds), as a .tflite model folder."""
    from docs import own_model_example as example
    path = str(tmp_path_factory.mktemp("toy") / "colours_tflite")
    example.save(example.train(), path, "tflite")
    return path


def predict(url, data, model=None, name="i.png"):
    params = {"model": model} if model else {}
    return requests.post(url + "/predict", params=params, files={"image": (name, data)}, timeout=60)


@pytest.mark.skipif(not os.path.exists(CASTLE), reason="needs ../shared/castle_image.jpg")
def test_two_models_each_answer_with_their_own_labels_on_every_protocol(service, toy):
    castle = open(CASTLE, "rb").read()
    models = f"lite0=efficientnet_lite0,toy={toy}"
    lite0_worker = service.start_worker(MODEL="efficientnet_lite0", KEY_PREFIX=f"{service.prefix}:lite0")
    service.start_worker(MODEL=toy, KEY_PREFIX=f"{service.prefix}:toy")
    url, _ = service.start_web(MODELS=models)
    red = png([SOLIDS["red"]])

    # The course's /predict: the first model by default, any by name, 404 for one not served.
    assert predict(url, castle, name="castle.jpg").json()["predictions"][0]["label"] == "castle"
    assert predict(url, castle, "lite0", "castle.jpg").json()["model"] == "efficientnet_lite0"
    toy_answer = predict(url, red, "toy").json()
    assert toy_answer["predictions"][0]["label"] == "red" and toy_answer["model"] == "colours_tflite"
    unknown = predict(url, red, "nope")
    assert unknown.status_code == 404 and "lite0, toy" in unknown.json()["error"]

    # Open Inference Protocol v2 with the real Triton client: each model by its name, its own labels.
    client = httpclient.InferenceServerClient(url.split("//")[1])
    for model, data, label in (("lite0", castle, "castle"), ("toy", red, "red")):
        tensor = httpclient.InferInput("IMAGE", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
        result = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput(
            "PROBABILITIES", binary_data=True, class_count=1)])
        assert result.as_numpy("PROBABILITIES")[0][0].decode().split(":")[2] == label
    assert client.get_model_metadata("toy")["outputs"][0]["shape"] == [-1, 6]
    with pytest.raises(Exception, match="unknown model"):
        client.get_model_metadata("nope")

    # TF Serving REST.
    import base64
    for model, data, label in (("lite0", castle, "castle"), ("toy", red, "red")):
        body = {"instances": [{"b64": base64.b64encode(data).decode()}]}
        answer = requests.post(f"{url}/v1/models/{model}:predict", json=body, timeout=60).json()
        assert answer["predictions"][0]["labels"][0] == label

    # /healthz: both models, each with its worker; /metrics: each model's queue.
    health = requests.get(url + "/healthz", timeout=10).json()
    assert health["ok"] is True and [m["name"] for m in health["models"]] == ["lite0", "toy"]
    assert all(m["live_workers"] == 1 for m in health["models"])
    assert {w["model"] for w in health["workers"]} == {"efficientnet_lite0", "colours_tflite"}
    assert 'imgq_model_queue_length{model="toy"}' in requests.get(url + "/metrics", timeout=10).text

    # One model's worker killed under load: the other model keeps answering all the while.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        toy_answers = [pool.submit(predict, url, red, "toy") for _ in range(40)]
        lite0_worker.signal(signal.SIGKILL)
        toy_answers = [f.result() for f in toy_answers]
    assert [a.status_code for a in toy_answers] == [200] * 40
    assert {a.json()["predictions"][0]["label"] for a in toy_answers} == {"red"}
    wait_until(lambda: not requests.get(url + "/healthz", timeout=10).json()["ok"], timeout=60)
    assert predict(url, red, "toy").status_code == 200

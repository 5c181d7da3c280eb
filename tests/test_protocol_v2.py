"""The standard protocols against real processes: the real tritonclient[http] from PyPI speaking the Open
Inference Protocol v2 to the service (encoded images and pixel tensors, binary and JSON tensor data), and
TF Serving's REST shape with plain requests."""
import base64
import os
import re

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import CASTLE, grey_png, standin_label


def _client(url):
    return httpclient.InferenceServerClient(url[len("http://"):], connection_timeout=60, network_timeout=120)


def _bytes_input(images, binary=True):
    tensor = httpclient.InferInput("IMAGE", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=binary)
    return tensor


def _pixels_input(array, binary=True):
    tensor = httpclient.InferInput("PIXELS", list(array.shape), "UINT8")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _top(classification_row):
    """b"0.935:483:castle" (binary data) or "0.935:483:castle" (JSON) → (0.935, 483, "castle")."""
    if isinstance(classification_row, bytes):
        classification_row = classification_row.decode()
    score, index, label = classification_row.split(":", 2)
    return float(score), int(index), label


def test_tritonclient_classifies_castle_with_the_real_model(service):
    if not os.path.exists(CASTLE):
        pytest.skip(f"{CASTLE} not found")
    service.start_worker(MODEL="efficientnet_lite0", BATCH_SIZE=4)
    url, _ = service.start_web(MODEL="efficientnet_lite0")
    client = _client(url)
    with open(CASTLE, "rb") as f:
        castle = f.read()

    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("efficientnet_lite0")
    assert not client.is_model_ready("resnet50")  # not what this server serves
    server = client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"] and "classification" in server["extensions"]
    meta = client.get_model_metadata("efficientnet_lite0")
    assert meta["name"] == "efficientnet_lite0"
    assert {(t["name"], t["datatype"]) for t in meta["inputs"]} == {("IMAGE", "BYTES"), ("PIXELS", "UINT8")}
    assert meta["outputs"] == [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 1000]}]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("no_such_model")
    assert unknown.value.status() == "404" and "no_such_model" in unknown.value.message()

    # The encoded file as BYTES (binary tensor data, tritonclient's default), all outputs (FP32) back.
    result = client.infer("efficientnet_lite0", [_bytes_input([castle])])
    probabilities = result.as_numpy("PROBABILITIES")
    assert probabilities.dtype == np.float32 and probabilities.shape == (1, 1000)
    assert abs(float(probabilities.sum()) - 1.0) < 1e-3
    castle_index = int(np.argmax(probabilities[0]))
    assert probabilities[0, castle_index] > 0.8
    # The same file with the classification extension (class_count), as JSON tensors this time.
    # In JSON an encoded file travels as base64 text (tritonclient sends JSON BYTES as UTF-8 strings).
    result = client.infer("efficientnet_lite0", [_bytes_input([base64.b64encode(castle)], binary=False)],
                          outputs=[httpclient.InferRequestedOutput("PROBABILITIES", binary_data=False, class_count=3)])
    top = [_top(row) for row in result.as_numpy("PROBABILITIES")[0]]
    assert top[0][2] == "castle" and top[0][1] == castle_index and top[0][0] > 0.8
    assert [t[0] for t in top] == sorted((t[0] for t in top), reverse=True)

    # The castle as a UINT8 pixel tensor [1, 224, 224, 3], prepared as the web server prepares uploads.
    from imgq.web.images import prepare_image
    pixels = prepare_image(castle, (224, 224))[None]
    result = client.infer("efficientnet_lite0", [_pixels_input(pixels)],
                          outputs=[httpclient.InferRequestedOutput("PROBABILITIES", class_count=1)])
    assert _top(result.as_numpy("PROBABILITIES")[0][0])[2] == "castle"


def test_a_batch_of_8_images_gets_8_answers_each_its_own(service):
    # BATCH_WAIT_MS: a batch waits up to 2 s for more jobs, so the 8 jobs of one request (pushed within
    # milliseconds) share a batch even on a busy machine, where the worker might otherwise take each alone.
    worker = service.start_worker(BATCH_SIZE=32, BATCH_WAIT_MS=2000)
    url, _ = service.start_web()
    client = _client(url)
    levels = [5, 17, 40, 99, 128, 200, 233, 254]

    # Encoded images, BYTES [8], FP32 probabilities back (binary).
    result = client.infer("standin", [_bytes_input([grey_png(level) for level in levels])])
    probabilities = result.as_numpy("PROBABILITIES")
    assert probabilities.shape == (8, 1000)
    assert list(np.argmax(probabilities, axis=1)) == levels

    # Pixels, UINT8 [8, 224, 224, 3], top 2 as "score:index:label" strings.
    pixels = np.stack([np.full((224, 224, 3), level, np.uint8) for level in levels])
    result = client.infer("standin", [_pixels_input(pixels)],
                          outputs=[httpclient.InferRequestedOutput("PROBABILITIES", class_count=2)])
    rows = result.as_numpy("PROBABILITIES")
    assert rows.shape == (8, 2)
    for level, row in zip(levels, rows):
        score, index, label = _top(row[0])
        assert (index, label) == (level, standin_label(level)) and abs(score - 0.9) < 1e-5

    # Each image travelled as its own job: 16 job lines, 16 different ids, batched together by the worker.
    done = re.findall(r"job\.done .*?id=(\w+).*? batch=(\d+)", worker.log_text())
    assert len(done) == 16 and len({job_id for job_id, _ in done}) == 16
    assert max(int(batch) for _, batch in done) > 1


def test_protocol_errors_are_json_in_the_protocol_shape(service):
    # No worker: the requests below must fail before any job is made. A small body cap, to test it cheaply.
    url, _ = service.start_web(MAX_UPLOAD_BYTES="100000")
    infer = url + "/v2/models/standin/infer"

    def post(body, **kwargs):
        response = requests.post(infer, json=body, timeout=30, **kwargs)
        assert response.headers["Content-Type"].startswith("application/json"), response.text
        return response.status_code, response.json()["error"]

    one = {"name": "IMAGE", "datatype": "BYTES", "shape": [1]}
    assert post({"inputs": [dict(one, data=["%%% not base64"])]})[0] == 400
    status, message = post({"inputs": [dict(one, data=[base64.b64encode(b"plain text").decode()])]})
    assert status == 400 and "image 0" in message
    status, message = post({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 10, 10, 3],
                                        "data": [0] * 300}]})
    assert status == 400 and "224" in message
    assert post({"inputs": [dict(one, datatype="FP32", data=[1.0])]})[0] == 400
    assert post({"inputs": []})[0] == 400
    status, message = post({"inputs": [dict(one, data=["aGk="])], "outputs": [{"name": "LOGITS"}]})
    assert status == 400 and "PROBABILITIES" in message
    response = requests.post(infer, data=b"\x89PNG not json", timeout=30)
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    status, message = post({"inputs": [dict(one, data=["A" * 200_000])]})
    assert status == 413 and "MAX_UPLOAD_BYTES" in message
    status, message = post({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 224, 224, 3],
                                        "data": [[1, 2], [3]]}]})
    assert status == 400 and "regular" in message
    response = requests.post(url + "/v2/models/nope/infer", json={"inputs": []}, timeout=30)
    assert response.status_code == 404 and "nope" in response.json()["error"]
    # Valid, but no worker is alive: not ready, in the protocol's terms.
    assert requests.get(url + "/v2/health/live", timeout=5).status_code == 200
    assert requests.get(url + "/v2/health/ready", timeout=5).status_code == 503
    assert requests.get(url + "/v2/models/standin/ready", timeout=5).status_code == 503


def test_tf_serving_predict_and_status(service):
    service.start_worker()
    url, _ = service.start_web()
    status = requests.get(url + "/v1/models/standin", timeout=5).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    levels = [3, 77, 150]
    body = {"instances": [{"b64": base64.b64encode(grey_png(level)).decode()} for level in levels[:2]]
            + [np.full((224, 224, 3), levels[2], np.uint8).tolist()]}
    response = requests.post(url + "/v1/models/standin:predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["classes"][0] for p in predictions] == levels
    assert [p["labels"][0] for p in predictions] == [standin_label(level) for level in levels]
    assert all(len(p["probabilities"]) == 1000 for p in predictions)

    bad = requests.post(url + "/v1/models/standin:predict", json={"instances": [{"b64": "!!"}]}, timeout=30)
    assert bad.status_code == 400 and "instance 0" in bad.json()["error"]
    assert requests.post(url + "/v1/models/standin:predict", json={"rows": []}, timeout=30).status_code == 400
    missing = requests.get(url + "/v1/models/resnet50", timeout=5)
    assert missing.status_code == 404 and "error" in missing.json()


def test_a_batch_that_cannot_finish_takes_all_its_jobs_back(service):
    """No worker: a full queue midway through a request's images (503), or no answer in time (504), leaves
    none of that request's jobs on the queue."""
    full_url, _ = service.start_web(MAX_QUEUE_LENGTH="3")
    slow_url, _ = service.start_web(REQUEST_TIMEOUT="1")
    body = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [5],
                        "data": [base64.b64encode(grey_png(level)).decode() for level in range(5)]}]}
    response = requests.post(full_url + "/v2/models/standin/infer", json=body, timeout=30)
    assert response.status_code == 503 and "full" in response.json()["error"]
    assert response.headers["Retry-After"]
    assert service.redis().llen(f"{service.prefix}:queue") == 0

    response = requests.post(slow_url + "/v2/models/standin/infer", json=body, timeout=30)
    assert response.status_code == 504 and "REQUEST_TIMEOUT" in response.json()["error"]
    assert service.redis().llen(f"{service.prefix}:queue") == 0


def test_a_classification_count_beyond_the_models_classes_gets_each_class_once():
    """A model folder's model may have fewer classes than the `classification` count asked for: the answer
    holds each class once, and its shape says so (as Triton's)."""
    from imgq.web.protocols.v2 import output_tensors
    probabilities = np.array([[0.1, 0.7, 0.2]] * 2, dtype=np.float32)
    [(tensor, _)] = output_tensors(probabilities, ["a", "b", "c"], [(False, 5)])
    assert tensor["shape"] == [2, 3] and len(tensor["data"]) == 6
    assert tensor["data"][:3] == ["0.700000:1:b", "0.200000:2:c", "0.100000:0:a"]

"""Peer 1: the app a student writes without a queue — Flask calls the model inside the request.

Where it sits: outside the service, started by bench/peers/run.py under gunicorn (2 processes x 8 threads,
each process loads its own copy of the model at import). Upload → helpers.prepare_image → model.predict
on a batch of one → JSON, all in the request's thread. Threads of one process share one model; the
runtime (TensorFlow or LiteRT) decides how concurrent calls overlap.
"""
from flask import Flask, jsonify, request

import common

app = Flask(__name__)
MODEL = common.load_model()  # per gunicorn worker: no --preload, TensorFlow does not survive a fork


@app.post("/predict")
def predict():
    upload = request.files.get("image")
    if upload is None:
        return jsonify(common.error("no 'image' file in the form")), 400
    try:
        pixels = common.prepare(upload.read(), MODEL)
    except common.BadImage as exc:
        return jsonify(common.error(str(exc))), exc.status
    return jsonify(common.answer(MODEL, MODEL.predict(pixels[None])[0]))


@app.get("/healthz")
def healthz():
    return jsonify(ok=True, model=common.name(MODEL))

"""The OpenAPI 3.1 document of every HTTP endpoint, served at GET /openapi.json (linked from GET /).

Where it sits: beside the flow, for people and code generators. It is built here as Python data rather than
kept as a JSON file so the model's input size and the settings it quotes are the running ones.
tests/test_openapi.py validates it with openapi-spec-validator and checks it names every route the app has.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from imgq import models
from imgq import settings

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_COURSE_ERROR = {"type": "object", "required": ["success", "error"],
                 "properties": {"success": {"const": False}, "error": {"type": "string"}}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(ref: str, *codes: int) -> dict[str, Any]:
    text = {400: "bad request (what is wrong is in 'error')", 401: "no API key, or not an accepted one",
            404: "unknown model name or version; unknown or expired job", 409: "the job runs or ended already",
            410: "the job was cancelled", 413: "body or image too large", 415: "compressed body",
            429: "this client has CLIENT_MAX_QUEUED jobs waiting", 500: "a worker could not classify",
            502: "the image crashed MAX_ATTEMPTS workers", 503: "Redis unavailable, queue full, or no live worker",
            504: "no result within the deadline (REQUEST_TIMEOUT or X-Timeout-Ms)"}
    return {str(c): _json({"$ref": ref}, text[c]) for c in codes}


def _name_param() -> dict[str, Any]:
    return {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "the served model's name (MODEL), e.g. efficientnet_lite0"}


def _version_param() -> dict[str, Any]:
    return {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "enum": ["1"]}}


def document() -> dict[str, Any]:
    h, w = models.input_size()
    from imgq.models.served import deployment
    served_names = [m.name for m in deployment()]
    E, C = "#/components/schemas/Error", "#/components/schemas/CourseError"
    job: dict[str, Any] = {"type": "object", "required": ["id", "status"], "properties": {
        "success": {"type": "boolean"}, "id": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "done", "failed", "expired", "cancelled"]},
        "lane": {"type": "string"}, "predictions": {"type": "array"},
        "jobs": {"type": "array", "items": {"type": "object"}}, "callback": {"type": "object"}}}
    tensor = {"type": "object", "required": ["name", "datatype", "shape"],
              "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                             "shape": {"type": "array", "items": {"type": "integer"}},
                             "parameters": {"type": "object"}, "data": {"type": "array"}}}
    infer_request = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string", "maxLength": settings.MAX_INFER_ID_LENGTH}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"$ref": "#/components/schemas/Tensor"},
                   "description": f"one tensor: IMAGE (BYTES [N], each an encoded image file, base64 in JSON) or "
                                  f"PIXELS (UINT8 [N, {h}, {w}, 3])"},
        "outputs": {"type": "array", "minItems": 1, "maxItems": settings.MAX_REQUEST_OUTPUTS,
                    "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"const": "PROBABILITIES"},
            "parameters": {"type": "object", "properties": {
                "classification": {"type": "integer", "minimum": 0, "maximum": settings.MAX_CLASSIFICATION,
                                   "description": "top k as BYTES 'score:index:label' instead of FP32"},
                "binary_data": {"type": "boolean"}}}}}}}}
    infer_response = {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}}}}
    binary = {"application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": "binary tensor data extension: a JSON header of Inference-Header-Content-Length bytes, "
                       "then the tensors"}}}
    trace_headers = [
        {"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "W3C trace context; its trace id is logged by the web server and the worker, and echoed"},
        {"name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "echoed; the trace id when absent"}]
    probe = _json({"type": "object"})
    v2_ready = {"200": _json({"type": "object", "properties": {"ready": {"type": "boolean"}}}),
                "503": _json({"type": "object"}, "not ready: Redis down or no live worker")}
    paths: dict[str, Any] = {
        "/": {"get": {"summary": "JSON index of the endpoints (a browser gets the page instead)",
                      "responses": {"200": {"description": "the index (JSON) or the page (text/html)", "content": {
                          "application/json": {"schema": {"type": "object"}},
                          "text/html": {"schema": {"type": "string"}}}}}}},
        "/predict": {"post": {
            "summary": "Classify an uploaded image (the course's API); with Prefer: respond-async, queue one job per "
                       "image and answer 202 at once",
            "parameters": [
                {"name": "model", "in": "query", "schema": {"type": "string", "enum": served_names},
                 "description": "the served model to ask (default: the first)"},
                {"name": "Prefer", "in": "header", "schema": {"type": "string", "example": "respond-async"},
                 "description": "respond-async (RFC 7240): 202 + Location: /jobs/{id} instead of waiting"},
                {"name": "X-Timeout-Ms", "in": "header", "schema": {"type": "integer", "minimum": 1},
                 "description": "the client's deadline: a job still queued then is dropped unrun (504 / expired); "
                                "at most REQUEST_TIMEOUT (ASYNC_TIMEOUT when asynchronous)"}],
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary",
                                         "description": "repeat it for several jobs (asynchronous requests)"},
                               "lane": {"type": "string", "enum": ["interactive", "batch"]},
                               "callback_url": {"type": "string", "format": "uri",
                                                "description": "asynchronous only; its host must be in "
                                                               "CALLBACK_HOSTS"}}}}}},
            "responses": {"200": _json({"type": "object", "required": ["success", "predictions"], "properties": {
                "success": {"const": True}, "id": {"type": "string"}, "model": {"type": "string"},
                "predictions": {"type": "array", "items": {"type": "object", "properties": {
                    "label": {"type": "string"}, "probability": {"type": "number"}}}},
                "timings": {"type": "object"}}}),
                "202": _json(job, "Accepted (Prefer: respond-async): the jobs are queued; Location names the first"),
                **_errors(C, 400, 401, 413, 415, 429, 500, 503, 504)}}},
        "/jobs/{job_id}": {
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"summary": "An asynchronous job: its result when done (until RESULT_TTL), else its status",
                    "responses": {"200": _json(job, "done: the course's JSON"),
                                  "202": _json(job, "queued or running; Retry-After says when to ask again"),
                                  **_errors(C, 404, 410, 500, 502, 504)}},
            "delete": {"summary": "Cancel a queued asynchronous job",
                       "responses": {"200": _json(job, "cancelled"), **_errors(C, 404, 409)}}},
        "/healthz": {"get": {"summary": "Redis, queue length, live workers",
                             "responses": {"200": _json({"type": "object"}),
                                           "503": _json({"type": "object"}, "Redis down or no live worker")}}},
        "/livez": {"get": {"summary": "The web process answers (never touches Redis)", "responses": {"200": probe}}},
        "/readyz": {"get": {"summary": "Redis answers and at least one model worker is alive",
                            "responses": {"200": probe, "503": _json({"type": "object"}, "not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics of the web servers and the workers (imgq_*)",
                             "responses": {"200": {"description": "Prometheus text format 0.0.4", "content": {
                                 "text/plain": {"schema": {"type": "string"}}}}}}},
        "/activity": {"get": {"summary": "The page's live figures: queue, workers, batches, requests",
                              "responses": {"200": _json({"type": "object"}),
                                            "503": _json({"$ref": C}, "Redis unavailable")}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}},
        "/v2": {"get": {"summary": "Open Inference Protocol v2: server metadata",
                        "responses": {"200": _json({"type": "object", "properties": {
                            "name": {"type": "string"}, "version": {"type": "string"},
                            "extensions": {"type": "array", "items": {"type": "string"}}}})}}},
        "/v2/health/live": {"get": {"summary": "v2: server live", "responses": {"200": probe}}},
        "/v2/health/ready": {"get": {"summary": "v2: server ready", "responses": v2_ready}},
    }
    metadata = {"get": {"summary": "v2: model metadata (inputs IMAGE or PIXELS, output PROBABILITIES)",
                        "responses": {"200": _json({"type": "object"}), **_errors(E, 404)}}}
    ready = {"get": {"summary": "v2: model ready", "responses": {**v2_ready, **_errors(E, 404)}}}
    infer = {"post": {"summary": "v2: classify a batch of images, each its own job",
                      "parameters": trace_headers,
                      "requestBody": {"required": True, "content": {
                          "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}, **binary}},
                      "responses": {"200": {"description": "probabilities FP32 [N, 1000], or top k as BYTES",
                                            "content": {"application/json": {"schema": {
                                                "$ref": "#/components/schemas/InferResponse"}}, **binary}},
                                    **_errors(E, 400, 404, 413, 415, 500, 503, 504)}}}
    for base, params in (("/v2/models/{name}", [_name_param()]),
                         ("/v2/models/{name}/versions/{version}", [_name_param(), _version_param()])):
        paths[base] = {"parameters": params, **metadata}
        paths[base + "/ready"] = {"parameters": params, **ready}
        paths[base + "/infer"] = {"parameters": params, **infer}
    paths["/v1/models/{name}"] = {"parameters": [_name_param()], "get": {
        "summary": "TF Serving: model status", "responses": {"200": _json({"type": "object"}), **_errors(E, 404)}}}
    paths["/v1/models/{name}:predict"] = {"parameters": [_name_param()], "post": {
        "summary": "TF Serving: classify instances ({\"b64\": ...} images or pixel lists)",
        "parameters": trace_headers,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {
            "instances": {"type": "array", "minItems": 1, "maxItems": settings.MAX_REQUEST_IMAGES}}}}}},
        "responses": {"200": _json({"type": "object", "required": ["predictions"], "properties": {
            "predictions": {"type": "array", "items": {"type": "object", "properties": {
                "probabilities": {"type": "array", "items": {"type": "number"}},
                "classes": {"type": "array", "items": {"type": "integer"}},
                "labels": {"type": "array", "items": {"type": "string"}},
                "scores": {"type": "array", "items": {"type": "number"}}}}}}}),
            **_errors(E, 400, 404, 413, 500, 503, 504)}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Keras + Redis image classifier", "version": "1.0",
                 "description": "Every answer echoes the headers traceparent and X-Request-ID."},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR, "CourseError": _COURSE_ERROR, "Tensor": tensor,
                                   "InferRequest": infer_request, "InferResponse": infer_response}},
    }


def blueprint() -> Blueprint:
    bp = Blueprint("openapi", __name__)
    body = document()

    @bp.get("/openapi.json")
    def openapi_json() -> Response:
        return jsonify(body)

    return bp

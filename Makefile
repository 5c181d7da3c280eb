# Two commands for a new user: `make run` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help run redis tune test test-containers bench bench-notify bench-peers bench-tax soak docs docs-check clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/' | expand -t 14

$(VENV)/.installed: requirements.txt
	@echo "Installing the service's Python packages into $(VENV) (TensorFlow, LiteRT, Flask, gunicorn, redis ...:"
	@echo "a few minutes, once; later runs start at once)."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# `@`: no echo, every line of `make run` is a log line. No shell syntax in the command either: make then runs
# the launcher itself (no sh in between that Ctrl-C would kill), sees its exit code 0, and prints no error.
run: $(VENV)/.installed  ## the service: Redis + web server on :5000 + WORKERS model workers, until Ctrl-C
	@$(PY) launcher.py

redis: $(VENV)/.installed  ## only the embedded redis-server on 127.0.0.1:6379 (the course's shell 1)
	@$(PY) launcher.py redis

# The worker's shapes measured on this machine, in turns; the winner goes to tuned.env, which `make run` reads.
tune: $(VENV)/.installed  ## measure the worker's shapes here (about 6 minutes); make run then uses the winner
	$(PY) -m bench.tune

test: $(VENV)/.installed  ## the test suite against real processes
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -n 2  # two test processes (pytest-xdist), each with its own Redis

# The image built from the Dockerfile and compose.yaml run on Debian's podman (installed when missing, as root):
# minutes on a clean machine, seconds more once the base images and the build's layers are cached.
test-containers: $(VENV)/.installed  ## the container image and compose.yaml, built and run on podman (slow)
	IMGQ_CONTAINER_TESTS=1 $(PY) -m pytest -s tests/test_containers.py

clean:  ## remove .venv and pytest's cache
	rm -rf $(VENV) .pytest_cache

# Benchmarks against processes it starts itself; writes bench/results/latest.json (a few minutes).
bench: $(VENV)/.installed  ## benchmarks, writes bench/results/latest.json (a few minutes)
	$(PY) -m bench.run

# Notifications against polling (latency CDFs, commands vs waiting time, fan-out, a lost notification):
# bench/results/notifications.json, used by the write-up's question 5 (about 4 minutes).
bench-notify: $(VENV)/.installed  ## notifications against polling, bench/results/notifications.json
	$(PY) -m bench.notifications

# The service next to Flask-in-the-request, LitServe and Ray Serve (bench/peers/, their own venv).
bench-peers: $(VENV)/.installed  ## the service against Flask, LitServe and Ray Serve, bench/results/peers.json
	$(PY) -m bench.peers.run

# Where each CPU millisecond of a request goes (per process, per thread), and the defaults against each change
# undone, in turns: bench/results/tax.json, shown on docs/benchmarks.md (about 15 minutes).
bench-tax: $(VENV)/.installed  ## the queue's CPU per request by thread, and what each default buys, bench/results/tax.json
	$(PY) -m bench.tax

# Twenty minutes of mixed good, bad and abandoned uploads with a worker killed every few minutes.
soak: $(VENV)/.installed  ## 20-minute soak run: outcomes, keys and memory over time, bench/results/soak.json
	$(PY) -m bench.soak

# The write-up: docs/writeup.pdf from docs/writeup.md, the real source files, a live run of the service, the
# tests and bench/results/notifications.json (a few minutes), from a commit: it refuses uncommitted changes.
# Needs Pango (docs/build.py installs it). docs-check: is the committed PDF that of the code now?
$(VENV)/.docs-installed: $(VENV)/.installed docs/requirements.txt
	$(PY) -m pip install --quiet -r docs/requirements.txt
	touch $@

docs: $(VENV)/.docs-installed  ## rebuild docs/writeup.pdf (a few minutes; commit first)
	$(PY) -m docs.build

docs-check: $(VENV)/.docs-installed  ## is docs/writeup.pdf built from the code as it is now?
	$(PY) -m docs.build --check

"""gunicorn settings for `gunicorn run_web_server:app`, taken from settings.py (read by gunicorn at start)."""
import os
import shutil
import tempfile

import settings

bind = f"{settings.HOST}:{settings.PORT}"
workers = settings.WEB_PROCESSES
worker_class = "gthread"  # a waiting request holds a thread, not a process
threads = settings.WEB_THREADS
timeout = int(settings.REQUEST_TIMEOUT) + 30
graceful_timeout = int(settings.REQUEST_TIMEOUT) + 5
accesslog = None  # the app logs one line per request itself

# With several processes, /metrics must add up all of them: prometheus_client's multiprocess mode keeps
# each process's counters in files here (set before the workers import prometheus_client).
_own_metrics_dir = workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imgq-metrics-")


def child_exit(server, worker):
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

"""Every knob of the service, in one place.

Each setting is read from an environment variable of the same name, with the default given here.
The web server, the model worker, the launcher, the tests and the benchmarks all import this module,
so a reader finds every default in one look (the README's configuration table lists the same names).
"""
import os


def _str(name, default):
    return os.environ.get(name, default)


def _int(name, default):
    return int(os.environ.get(name, default))


def _float(name, default):
    return float(os.environ.get(name, default))


def _bool(name, default):
    return os.environ.get(name, "1" if default else "0").strip().lower() in ("1", "true", "yes", "on")


# --- Redis ---------------------------------------------------------------------------------------
# Unset means "make run starts an embedded redis-server on 127.0.0.1:EMBEDDED_REDIS_PORT".
# Passwords and TLS go in the URL: redis://:secret@host:6379/0, rediss://user:secret@host:6380/0.
REDIS_URL = _str("REDIS_URL", "")
EMBEDDED_REDIS_PORT = _int("EMBEDDED_REDIS_PORT", 6379)
# Prefix of every key the service writes, so several deployments can share one Redis (see keys.py).
KEY_PREFIX = _str("KEY_PREFIX", "imgq")
# How long a web request waits for Redis to accept a connection before answering 503.
REDIS_CONNECT_TIMEOUT = _float("REDIS_CONNECT_TIMEOUT", 1.0)

# --- Model and batching --------------------------------------------------------------------------
# auto | resnet50 | efficientnet_lite0 | standin (the fast stand-in for queue tests; never the default)
MODEL = _str("MODEL", "auto")
# Optional local file with Keras ResNet50 ImageNet weights (resnet50_weights_tf_dim_ordering_tf_kernels.h5).
RESNET50_WEIGHTS = _str("RESNET50_WEIGHTS", "")
# Where converted weights are cached (EfficientNet-Lite0 converted from the PyTorch file).
MODEL_CACHE_DIR = _str("MODEL_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "redis-keras-queue"))
# Fixed per-batch delay of the stand-in model, in ms (0 = instant). Used by the scaling benchmark.
STANDIN_LATENCY_MS = _float("STANDIN_LATENCY_MS", 0)
# Most jobs one take gets and one model call classifies. 8: chosen from the 2-core sweep (README, Benchmarks).
BATCH_SIZE = _int("BATCH_SIZE", 8)
# How long a worker may wait for more jobs to fill a batch once it has one (0 = take what is there).
BATCH_WAIT_MS = _float("BATCH_WAIT_MS", 0)
# auto (each model on the runtime measured fastest for it, models.AUTO_RUNTIME) | litert | tensorflow.
MODEL_RUNTIME = _str("MODEL_RUNTIME", "auto")
# Threads one worker's model uses (LiteRT's interpreter; TensorFlow's intra-op pool). 0 = every core.
MODEL_THREADS = _int("MODEL_THREADS", 0)
# 1 = MODEL=resnet50 (or auto) may download Keras' ResNet50 weights when no local file exists (else never).
RESNET50_DOWNLOAD = _bool("RESNET50_DOWNLOAD", False)
# TF_INTRA_OP_THREADS: the older name of MODEL_THREADS, used (by both runtimes) when MODEL_THREADS is 0.
# TF_INTER_OP_THREADS: TensorFlow's inter-op pool (TensorFlow runtime only; 0 = TensorFlow decides).
TF_INTRA_OP_THREADS = _int("TF_INTRA_OP_THREADS", 0)
TF_INTER_OP_THREADS = _int("TF_INTER_OP_THREADS", 0)

# --- Requests and results ------------------------------------------------------------------------
REQUEST_TIMEOUT = _float("REQUEST_TIMEOUT", 30)
RESULT_TTL = _int("RESULT_TTL", 60)
# The backup: how often a waiting request looks for its result even without a notification.
POLL_INTERVAL = _float("POLL_INTERVAL", 1.0)
# Off = polling only (the course's way); on = keyspace notifications wake the waiting request.
NOTIFICATIONS = _bool("NOTIFICATIONS", True)
MAX_UPLOAD_BYTES = _int("MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
# Refuse images whose decoded size would exceed this many pixels (decompression bombs).
MAX_IMAGE_PIXELS = _int("MAX_IMAGE_PIXELS", 40_000_000)
MAX_QUEUE_LENGTH = _int("MAX_QUEUE_LENGTH", 1000)

# --- Workers' liveness ---------------------------------------------------------------------------
# A worker refreshes its heartbeat key every HEARTBEAT_INTERVAL s; the key lives HEARTBEAT_TTL s.
# A worker whose heartbeat has expired is dead: a live worker puts its in-flight jobs back on the queue.
HEARTBEAT_INTERVAL = _float("HEARTBEAT_INTERVAL", 5)
HEARTBEAT_TTL = _int("HEARTBEAT_TTL", 15)
# How long one blocking pop waits before the worker loops (an idle worker sends one command per this).
# Shutdown does not wait for it: a signal interrupts the pop.
BLOCK_TIMEOUT = _float("BLOCK_TIMEOUT", 30)

# --- The page's live view (activity.py, live.py) ---------------------------------------------------
# Seconds between the page's refreshes of the live view; also how often a web process writes its answers'
# counts and latencies to Redis while a page is open. Nothing is recorded while no page is open.
LIVE_INTERVAL = _float("LIVE_INTERVAL", 1.0)
# Seconds of history behind requests/s and p50/p95 (and how long the records live after the last write).
LIVE_WINDOW = _int("LIVE_WINDOW", 60)
# Most records each capped list keeps (batch records; per-second request records of all web processes).
LIVE_RECORDS = _int("LIVE_RECORDS", 500)

# --- Processes -----------------------------------------------------------------------------------
HOST = _str("HOST", "127.0.0.1")
PORT = _int("PORT", 5000)
WORKERS = _int("WORKERS", 1)              # model workers started by `make run`
WEB_PROCESSES = _int("WEB_PROCESSES", 2)  # gunicorn worker processes (Python runs one core per process)
WEB_THREADS = _int("WEB_THREADS", 64)     # threads per gunicorn process (one per waiting request)

# --- Logs ----------------------------------------------------------------------------------------
LOG_LEVEL = _str("LOG_LEVEL", "INFO").upper()
LOG_FORMAT = _str("LOG_FORMAT", "text")  # text | json
# Name of this server in every log line (default: the host name).
SERVER_NAME = _str("SERVER_NAME", "")

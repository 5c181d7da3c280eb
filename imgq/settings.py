"""Every knob of the service, in one place, checked once at start.

Each setting is read from an environment variable of the same name, with the default given here.
The web server, the model worker, the launcher, the tests and the benchmarks all import this module,
so a reader finds every default in one look (docs/configuration.md lists the same names).

Validation: a setting's line may give limits or choices, `_int("PORT", 5000, low=1, high=65535)`,
`_str("LOG_FORMAT", "text", choices=("text", "json"))`. A value that is not accepted is recorded in
`errors` (one line naming the variable, the value and what is accepted) and the default is used in its
place, so importing this module never fails and never exits (tests and libraries import it). Every entry
point calls `check()` first: it prints each recorded error on one line of stderr and exits with code 2,
before anything starts. Combinations that only one entry point cares about (WORKERS=0 under `make run`) are
added with `refuse(name, value, accepted)` before its `check()`.
"""
from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

_N = TypeVar("_N", int, float)

# One line per setting that was not accepted, in the order read. check() reports them.
errors: list[str] = []


def refuse(name: str, value: object, accepted: str) -> None:
    """Record that `name`=`value` is not accepted; `accepted` says what would be (shown to the user)."""
    errors.append(f"invalid setting {name}={value!r}: expected {accepted}")


def check(program: str | None = None, code: int = 2) -> None:
    """At an entry point's start: if any setting was refused, print one line per refusal to stderr and
    exit with `code` (2; no traceback). Returns quietly when everything is valid."""
    if not errors:
        return
    program = program or os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "python")
    for line in errors:
        print(f"{program}: {line}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(code)


def _bounds(kind: str, low: float | None, high: float | None, gt: float | None) -> str:
    if low is not None and high is not None:
        return f"{kind} from {low} to {high}"
    if gt is not None:
        return f"{kind} > {gt}"
    if low is not None:
        return f"{kind} >= {low}"
    if high is not None:
        return f"{kind} <= {high}"
    return kind


def _number(convert: Callable[[str], _N], kind: str, name: str, default: _N, low: float | None, high: float | None,
            gt: float | None) -> _N:
    raw = os.environ.get(name)
    if raw is None:
        return default  # the defaults here are valid by construction (tests/test_settings.py checks)
    accepted = _bounds(kind, low, high, gt)
    try:
        value = convert(raw.strip())
    except ValueError:
        refuse(name, raw, accepted)
        return default
    if (isinstance(value, float) and not math.isfinite(value)) or (low is not None and value < low) \
            or (high is not None and value > high) or (gt is not None and value <= gt):
        refuse(name, raw, accepted)
        return default
    return value


def _str(name: str, default: str, choices: Sequence[str] | None = None, nonempty: bool = False,
         or_folder: bool = False) -> str:
    """choices: the accepted values, matched without regard to case and returned as spelled here.
    or_folder: a value that is no choice may be an existing folder's path instead (returned absolute)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    if choices is not None:
        for choice in choices:
            if raw.strip().lower() == choice.lower():
                return choice
        folder = os.path.expanduser(raw.strip())
        if or_folder and raw.strip() and os.path.isdir(folder):
            return os.path.abspath(folder)
        refuse(name, raw, "one of " + ", ".join(choices) + (", or an existing folder's path" if or_folder else ""))
        return default
    if nonempty and not raw.strip():
        refuse(name, raw, "a non-empty value")
        return default
    return raw


def _int(name: str, default: int, low: int | None = None, high: int | None = None, gt: int | None = None) -> int:
    return _number(int, "a whole number", name, default, low, high, gt)


def _float(name: str, default: float, low: float | None = None, high: float | None = None,
           gt: float | None = None) -> float:
    return _number(float, "a number", name, default, low, high, gt)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    refuse(name, raw, "1/true/yes/on or 0/false/no/off")
    return default


# --- Redis ---------------------------------------------------------------------------------------
# Unset means "make run starts an embedded redis-server on 127.0.0.1:EMBEDDED_REDIS_PORT".
# Passwords and TLS go in the URL: redis://:secret@host:6379/0, rediss://user:secret@host:6380/0.
# Sentinel: redis+sentinel://:secret@s1:26379,s2:26379/mymaster/0; Cluster: redis+cluster://:secret@node:7000/
# (with a hash tag in KEY_PREFIX). imgq/jobs/connection.py reads it.
REDIS_URL = _str("REDIS_URL", "")
EMBEDDED_REDIS_PORT = _int("EMBEDDED_REDIS_PORT", 6379, low=1, high=65535)
# Prefix of every key the service writes, so several deployments can share one Redis (see imgq/jobs/keys.py).
KEY_PREFIX = _str("KEY_PREFIX", "imgq", nonempty=True)
# How long a web request waits for Redis to accept a connection before answering 503.
REDIS_CONNECT_TIMEOUT = _float("REDIS_CONNECT_TIMEOUT", 1.0, gt=0)
# How long a web request waits for Redis to answer one command (push, /healthz, /activity) before 503:
# a hung Redis (accepts connections, answers nothing) then costs a request this long, not minutes.
REDIS_SOCKET_TIMEOUT = _float("REDIS_SOCKET_TIMEOUT", 1.0, gt=0)
# Read timeout of a waiting request's result reads (GETEX). Longer on purpose: a slow but alive Redis
# must not turn waiting requests into 503s; a read that times out is tried again until REQUEST_TIMEOUT.
REDIS_WAIT_TIMEOUT = _float("REDIS_WAIT_TIMEOUT", 5.0, gt=0)
# The embedded Redis' memory cap in MB (maxmemory, policy noeviction): when full, new jobs get 503 and the
# workers wait, instead of Redis growing until the machine swaps. The default queue (MAX_QUEUE_LENGTH jobs of
# ~150 KB) needs about 150 MB.
REDIS_MAXMEMORY_MB = _int("REDIS_MAXMEMORY_MB", 512, low=1)
# 1 = run on a Redis whose maxmemory-policy evicts keys (allkeys-lru ...); refused at start otherwise, because
# eviction drops queued jobs, results and heartbeats.
ALLOW_EVICTION = _bool("ALLOW_EVICTION", False)

# --- Model and batching --------------------------------------------------------------------------
# auto | resnet50 | efficientnet_lite0 | standin (the fast stand-in for queue tests; never the default), or the
# path of a model folder: your own classifier and its labels (docs/models.md#your-own-model, imgq/models/folder.py).
MODEL = _str("MODEL", "auto", choices=("auto", "resnet50", "efficientnet_lite0", "standin"), or_folder=True)
# Several models in one deployment: name=source[@workers],... where a source is a built-in name or a model
# folder; each model gets its own queue (keys under KEY_PREFIX:name) and its own workers (WORKERS each unless
# @workers says). The first is the default of POST /predict. Empty: one model, MODEL, its keys under KEY_PREFIX.
MODELS = _str("MODELS", "")
# Optional local file with Keras ResNet50 ImageNet weights (resnet50_weights_tf_dim_ordering_tf_kernels.h5).
RESNET50_WEIGHTS = _str("RESNET50_WEIGHTS", "")
# Where converted weights are cached (EfficientNet-Lite0 converted from the PyTorch file).
MODEL_CACHE_DIR = _str("MODEL_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "redis-keras-queue"))
# Fixed per-batch delay of the stand-in model, in ms (0 = instant). Used by the scaling benchmark.
STANDIN_LATENCY_MS = _float("STANDIN_LATENCY_MS", 0, low=0)
# Tests only (poison jobs): the stand-in model kills its own worker process, like an OOM kill or a native
# crash, when a batch holds a solid grey image of this level (0..255). -1: never.
STANDIN_CRASH_LEVEL = _int("STANDIN_CRASH_LEVEL", -1, low=-1, high=255)
# Most jobs one take gets and one model call classifies. 32: the best point of the 2-core sweep (docs/benchmarks.md).
BATCH_SIZE = _int("BATCH_SIZE", 32, low=1)
# How long a worker may wait for more jobs to fill a batch once it has one (0 = take what is there).
BATCH_WAIT_MS = _float("BATCH_WAIT_MS", 0, low=0)
# auto (each model on the runtime measured fastest for it, models.AUTO_RUNTIME) | litert | tensorflow.
MODEL_RUNTIME = _str("MODEL_RUNTIME", "auto", choices=("auto", "litert", "tensorflow"))
# Threads one worker's model uses (LiteRT's interpreter; TensorFlow's intra-op pool). 0 = every core.
MODEL_THREADS = _int("MODEL_THREADS", 0, low=0)
# LiteRT, a model run one image per invoke (Lite0, a model folder's one-image .tflite), MODEL_THREADS > 1: 1 =
# a batch of several images runs image by image on min(MODEL_THREADS, BATCH_SIZE) one-thread interpreters at
# once, a batch of one on the MODEL_THREADS-thread interpreter (litert_runtime.LiteRTModel says why); 0 =
# everything on the latter.
MODEL_LANES = _bool("MODEL_LANES", True)
# 1 = MODEL=resnet50 (or auto) may download Keras' ResNet50 weights when no local file exists (else never).
RESNET50_DOWNLOAD = _bool("RESNET50_DOWNLOAD", False)
# TF_INTRA_OP_THREADS: the older name of MODEL_THREADS, used (by both runtimes) when MODEL_THREADS is 0.
# TF_INTER_OP_THREADS: TensorFlow's inter-op pool (TensorFlow runtime only; 0 = TensorFlow decides).
TF_INTRA_OP_THREADS = _int("TF_INTRA_OP_THREADS", 0, low=0)
TF_INTER_OP_THREADS = _int("TF_INTER_OP_THREADS", 0, low=0)

# --- Requests and results ------------------------------------------------------------------------
REQUEST_TIMEOUT = _float("REQUEST_TIMEOUT", 30, gt=0)
RESULT_TTL = _int("RESULT_TTL", 60, low=1)
# The backup: how often a waiting request looks for its result even without a notification, while the result
# listener is not known to hear (reconnecting, CONFIG refused, NOTIFICATIONS=0).
POLL_INTERVAL = _float("POLL_INTERVAL", 1.0, gt=0)
# The same while the listener is subscribed and hears: Redis drops no pub/sub message without cutting the
# connection (which wakes every waiting request), so this only guards against events turned off behind our back.
# At 1 s a request that waited 10 s made 10 reads for one notification; at 5 s it makes 2 (bench-notify's sweep).
# Never more than half of RESULT_TTL (results.py), so a result whose event was missed is still read in time.
BACKUP_POLL_S = _float("BACKUP_POLL_S", 5.0, gt=0)
# Off = polling only (the course's way); on = keyspace notifications wake the waiting request.
NOTIFICATIONS = _bool("NOTIFICATIONS", True)
MAX_UPLOAD_BYTES = _int("MAX_UPLOAD_BYTES", 10 * 1024 * 1024, low=1)
# Refuse images whose decoded size would exceed this many pixels (decompression bombs).
# It bounds a decode's time (a 10 Mpx RGBA PNG took 0.2-0.7 s on a busy 2-core VM); MAX_DECODE_MB its memory.
MAX_IMAGE_PIXELS = _int("MAX_IMAGE_PIXELS", 40_000_000, low=1)
# Most segments (JPEG markers, PNG chunks, GIF extension sub-blocks) an image may hold before its pixels, and
# most bytes of them: a real photo has a few dozen and tens of KB; Pillow's header parse grows faster than the
# file with their number (imgq/web/containers.py). 413 above either.
MAX_IMAGE_SEGMENTS = _int("MAX_IMAGE_SEGMENTS", 1000, low=1)
MAX_IMAGE_METADATA_KB = _int("MAX_IMAGE_METADATA_KB", 4096, low=1)
# Most bytes outside any segment before the pixels (JPEG fill bytes and junk between markers, GIF bytes between
# blocks): real files have none or a few, and Pillow skips them one at a time in Python, about 0.4 s a MB.
MAX_IMAGE_PADDING_KB = _int("MAX_IMAGE_PADDING_KB", 64, low=0)
# Most memory one decode may take, in MB, estimated from the image's header (imgq/web/images.decode_bytes); 413 above.
MAX_DECODE_MB = _int("MAX_DECODE_MB", 256, low=1)
# Uploads one web process decodes at once: its decoding memory stays under this x MAX_DECODE_MB.
DECODE_CONCURRENCY = _int("DECODE_CONCURRENCY", 2, low=1)
# Seconds a request waits for its image's decode (run off the event loop, in a thread of the decode pool)
# before it is answered 413; the decode finishes in its slot meanwhile. The pixel limits bound it anyway (a
# 40 Mpx PNG decodes in well under a second): this catches what they cannot foresee.
DECODE_TIMEOUT = _float("DECODE_TIMEOUT", 10, gt=0)
# Images of at most this many pixels are decoded where the request runs, not in the decode pool: a decode of
# 1 Mpx takes a few ms, and handing castle's 0.4 Mpx to the pool instead paid nothing measurable (`make
# bench-tax`) while, at 64 clients, it made uploads queue for the pool's slots (0 = every image in the pool).
DECODE_INLINE_PIXELS = _int("DECODE_INLINE_PIXELS", 1_000_000, low=0)
# Seconds an upload waits for a decode slot before the request is answered 503 + Retry-After.
DECODE_WAIT = _float("DECODE_WAIT", 2.0, low=0)
MAX_QUEUE_LENGTH = _int("MAX_QUEUE_LENGTH", 1000, low=1)
# Most images one request of the standard protocols may carry (v2 infer, TF Serving predict); each is a job.
MAX_REQUEST_IMAGES = _int("MAX_REQUEST_IMAGES", 64, low=1)
# Most pixels (width x height, summed over its images, read from their headers before any is decoded) one v2 /
# TF Serving request may carry: it bounds a request's decode time as MAX_IMAGE_PIXELS bounds one image's.
# 100 M: 64 photos of 1.5 Mpx, or 8 of 12 Mpx; 64 images at MAX_IMAGE_PIXELS would take minutes.
MAX_REQUEST_PIXELS = _int("MAX_REQUEST_PIXELS", 100_000_000, low=1)
# Most entries in a v2 request's "outputs" (identical ones are answered once): each is a tensor of the answer.
MAX_REQUEST_OUTPUTS = _int("MAX_REQUEST_OUTPUTS", 4, low=1)
# Largest v2 classification count k (BYTES [N, k] of "score:index:label" strings); the FP32 output has them all.
MAX_CLASSIFICATION = _int("MAX_CLASSIFICATION", 100, low=1, high=1000)
# Longest v2 request "id" (the answer echoes it).
MAX_INFER_ID_LENGTH = _int("MAX_INFER_ID_LENGTH", 256, low=1)

# --- Asynchronous jobs, callbacks, lanes, deadlines, identical uploads ---------------------------------
# Seconds an asynchronous job (Prefer: respond-async) may wait on the queue before it is dropped (expired).
ASYNC_TIMEOUT = _float("ASYNC_TIMEOUT", 600, gt=0)
# Host names a callback_url may point at, comma-separated. Empty: no callback goes anywhere (no server-side
# request forgery until the operator names the receivers).
CALLBACK_HOSTS = _str("CALLBACK_HOSTS", "")
# The key callbacks are signed with (X-Signature: sha256=<HMAC-SHA256 of the body>); set it wherever callbacks
# are used: an empty key signs, but anyone can forge that signature.
CALLBACK_SECRET = _str("CALLBACK_SECRET", "")
# POSTs of one callback before it is recorded as failed (backoff 1, 2, 4 ... 60 s between them).
CALLBACK_MAX_ATTEMPTS = _int("CALLBACK_MAX_ATTEMPTS", 8, low=1)
# Seconds one callback POST may take.
CALLBACK_TIMEOUT = _float("CALLBACK_TIMEOUT", 5, gt=0)
# Seconds an idle worker waits on the interactive lane before it looks at the batch lane (a bulk job waits at
# most this long for an idle worker; a busy one takes from both lanes at every take).
LANE_POLL_S = _float("LANE_POLL_S", 5, gt=0)
# 1 = identical prepared pixels for the same model share one job while it is in flight (across every web
# process), and RESULT_CACHE_TTL > 0 answers a repeat from a recent result at once.
DEDUP = _bool("DEDUP", False)
RESULT_CACHE_TTL = _int("RESULT_CACHE_TTL", 0, low=0)

# --- Workers' liveness ---------------------------------------------------------------------------
# A worker refreshes its heartbeat key every HEARTBEAT_INTERVAL s; the key lives HEARTBEAT_TTL s.
# A worker whose heartbeat has expired is dead: a live worker puts its in-flight jobs back on the queue.
HEARTBEAT_INTERVAL = _float("HEARTBEAT_INTERVAL", 5, gt=0)
HEARTBEAT_TTL = _int("HEARTBEAT_TTL", 15, low=1)
# How long one blocking pop waits before the worker loops (an idle worker sends one command per this).
# Shutdown does not wait for it: a signal interrupts the pop.
BLOCK_TIMEOUT = _float("BLOCK_TIMEOUT", 30, gt=0)
# A job whose worker died this many times (OOM, native crash: the image itself may be the cause) is not
# put back on the queue again: it goes to the dead-letter list and its client gets a 502 at once.
MAX_ATTEMPTS = _int("MAX_ATTEMPTS", 3, low=1)
# Most jobs the dead-letter list keeps (newest first; each is a ~200 KB job): older ones are dropped.
DEAD_LETTER_MAX = _int("DEAD_LETTER_MAX", 100, low=1)

# --- The page's live view (imgq/observe/activity.py, imgq/web/page.py) ----------------------------------------
# Seconds between the page's refreshes of the live view; also how often a web process writes its answers'
# counts and latencies to Redis while a page is open. Nothing is recorded while no page is open.
LIVE_INTERVAL = _float("LIVE_INTERVAL", 1.0, gt=0)
# Seconds of history behind requests/s and p50/p95 (and how long the records live after the last write).
LIVE_WINDOW = _int("LIVE_WINDOW", 60, low=1)
# Most records each capped list keeps (batch records; per-second request records of all web processes).
LIVE_RECORDS = _int("LIVE_RECORDS", 500, low=1)

# --- Processes -----------------------------------------------------------------------------------
HOST = _str("HOST", "127.0.0.1", nonempty=True)
PORT = _int("PORT", 5000, low=1, high=65535)
WORKERS = _int("WORKERS", 1, low=0)              # model workers started by `make run`
WEB_PROCESSES = _int("WEB_PROCESSES", 2, low=1)  # gunicorn worker processes (Python runs one core per process)
WEB_THREADS = _int("WEB_THREADS", 64, low=1)     # threads per gunicorn process (one per waiting request)
# gunicorn worker class: gevent (one greenlet per connection, so slow or idle clients hold no thread) or
# gthread (WEB_THREADS threads per process; a client that stops mid-body holds one until BODY_TIMEOUT).
WEB_WORKER = _str("WEB_WORKER", "gevent", choices=("gevent", "gthread"))
# Most open connections per gunicorn process under gevent (idle, slow and waiting ones together).
WEB_CONNECTIONS = _int("WEB_CONNECTIONS", 1000, low=1)
# Seconds a client has to send the whole request body (then 408); headers must come within HEADER_TIMEOUT.
BODY_TIMEOUT = _float("BODY_TIMEOUT", 20, gt=0)
# Seconds a connection may sit without a complete request head (also the keep-alive idle time); then closed.
HEADER_TIMEOUT = _int("HEADER_TIMEOUT", 5, low=1)

# --- Clients: keys, shares, browsers ---------------------------------------------------------------
# API keys clients send as `Authorization: Bearer <key>`, comma-separated, and/or a file of keys (one per line,
# # comments allowed). None set: no key is asked for, which make run allows only while HOST is loopback.
API_KEYS = _str("API_KEYS", "")
API_KEYS_FILE = _str("API_KEYS_FILE", "")
# 1 = serve beyond loopback without API keys (a trusted network, or a proxy in front that authenticates).
API_KEYS_WAIVED = _bool("API_KEYS_WAIVED", False)
# Most jobs one client (API key, else address) may have waiting on the queue at once; past it 429 (0 = no cap).
CLIENT_MAX_QUEUED = _int("CLIENT_MAX_QUEUED", 500, low=0)
# Host names the page and GET /activity answer to (comma-separated; `*` = any), against DNS rebinding. Empty:
# the loopback names while HOST is loopback, else any.
ALLOWED_HOSTS = _str("ALLOWED_HOSTS", "")

# --- Logs ----------------------------------------------------------------------------------------
LOG_LEVEL = _str("LOG_LEVEL", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
LOG_FORMAT = _str("LOG_FORMAT", "text", choices=("text", "json"))
# Longest log line, in bytes with its newline. 4096 is PIPE_BUF: a line this long or shorter reaches a pipe in one
# atomic write, so lines of several processes sharing one (supervisord's, a container's) never tear each other.
LOG_LINE_MAX = _int("LOG_LINE_MAX", 4096, low=256)
# Name of this server in every log line (default: the host name).
SERVER_NAME = _str("SERVER_NAME", "")

MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
BUILT_IN_MODELS = ("auto", "resnet50", "efficientnet_lite0", "standin")


def parse_models(text: str) -> list[tuple[str, str, int | None]]:
    """MODELS → [(name, source, workers or None)]; ValueError naming the first entry that is wrong."""
    entries, names = [], set()
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, eq, rest = entry.partition("=")
        source, at, count = rest.rpartition("@") if "@" in rest else (rest, "", "")
        name, source = name.strip(), source.strip()
        if not eq or not MODEL_NAME.fullmatch(name):
            raise ValueError(f"{entry!r}: a name (a-z 0-9 _ -) = a source, e.g. lite0=efficientnet_lite0")
        if name in names:
            raise ValueError(f"{entry!r}: the name {name} is used twice")
        if source not in BUILT_IN_MODELS and not os.path.isdir(os.path.expanduser(source)):
            raise ValueError(f"{entry!r}: {source!r} is neither a built-in model ({', '.join(BUILT_IN_MODELS)}) "
                             "nor a folder")
        workers = None
        if at:
            if not count.strip().isdigit() or int(count) < 1:
                raise ValueError(f"{entry!r}: @{count} is not a number of workers (1 or more)")
            workers = int(count)
        names.add(name)
        entries.append((name, os.path.abspath(os.path.expanduser(source)) if source not in BUILT_IN_MODELS
                        else source, workers))
    return entries


# --- Combinations (checked after every setting is read) -------------------------------------------
def _refused(*names: str) -> bool:
    # A combination is judged only on values the user gave correctly, else one mistake shows as two.
    return any(line.startswith(f"invalid setting {name}=") for name in names for line in errors)


# redis-py would fail later, inside a request, with a less helpful message. The password is not shown.
_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://", "redis+cluster://",
            "rediss+cluster://")
if REDIS_URL and not REDIS_URL.startswith(_SCHEMES):
    refuse("REDIS_URL", re.sub(r":[^:@/]*@", ":***@", REDIS_URL),
           "empty, or a URL starting " + ", ".join(_SCHEMES))
# Redis Cluster: one deployment's keys must share one hash slot, or the scripts would be refused (CROSSSLOT).
_tag = KEY_PREFIX.find("{")
if REDIS_URL.startswith(("redis+cluster://", "rediss+cluster://")) and not (
        _tag >= 0 and KEY_PREFIX.find("}", _tag + 2) > _tag):
    refuse("KEY_PREFIX", KEY_PREFIX, f"a hash tag with Redis Cluster, e.g. {{{KEY_PREFIX}}}")
if MODELS:
    try:
        if not parse_models(MODELS):
            refuse("MODELS", MODELS, "name=source[@workers],... with at least one model")
    except ValueError as _exc:
        refuse("MODELS", MODELS, f"name=source[@workers],... ({_exc})")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Only this machine can reach `host`."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def refuse_open_host() -> None:
    """For the processes that serve HTTP (web server, make run): beyond loopback, anyone who can reach the port
    could use the service, so keys are needed, or an explicit waiver. A worker serves no port: not its check."""
    if not is_loopback(HOST) and not (API_KEYS.strip() or API_KEYS_FILE) \
            and not API_KEYS_WAIVED and not _refused("HOST", "API_KEYS_WAIVED"):
        refuse("HOST", HOST, "a loopback address, or API_KEYS / API_KEYS_FILE set (API_KEYS_WAIVED=1 to serve "
               "without keys)")


if API_KEYS_FILE and not os.path.isfile(API_KEYS_FILE):
    refuse("API_KEYS_FILE", API_KEYS_FILE, "a readable file of API keys, one per line")
# A heartbeat that expires before the next one is sent makes every live worker look dead to its peers.
if HEARTBEAT_TTL <= HEARTBEAT_INTERVAL and not _refused("HEARTBEAT_TTL", "HEARTBEAT_INTERVAL"):
    refuse("HEARTBEAT_TTL", HEARTBEAT_TTL, f"more than HEARTBEAT_INTERVAL ({HEARTBEAT_INTERVAL:g} s)")
# A result that expires before the waiting request's next poll is lost whenever a notification is.
if RESULT_TTL <= POLL_INTERVAL and not _refused("RESULT_TTL", "POLL_INTERVAL"):
    refuse("RESULT_TTL", RESULT_TTL, f"more than POLL_INTERVAL ({POLL_INTERVAL:g} s)")

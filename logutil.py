"""The course's logutil.py: one log line format for every process of the service.

The code lives in imgq/observe/logutil.py; this file keeps the course's name: `from logutil import log`.
"""
from imgq.observe.logutil import format_line, is_line, log, route_logging  # noqa: F401

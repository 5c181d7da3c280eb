"""The course's settings.py: every setting of the service, read from the environment.

They live in imgq/settings.py (one place, with each default and its check); this file keeps the course's
name for them, so `import settings; settings.BATCH_SIZE` works as in the course.
"""
from imgq.settings import *  # noqa: F401,F403
from imgq.settings import check, errors, refuse  # noqa: F401

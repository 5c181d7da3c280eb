"""Which models this deployment serves, and where each one's queue lives.

    MODEL=efficientnet_lite0                    one model; its keys under KEY_PREFIX itself
    MODELS=lite0=efficientnet_lite0,toy=/m/toy  several: each its own queue, workers and results under
                                                KEY_PREFIX:<name> (a deployment of its own inside one Redis);
                                                the first is POST /predict's default

A worker serves one model: `make run` starts each model's workers with MODEL=<source> and
KEY_PREFIX=<its prefix>, so the worker itself never knows of the others. The web server routes each request to
its model's queue by name (imgq/web/routes.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from imgq import settings
from imgq.jobs import keys


@dataclass(frozen=True)
class ServedModel:
    name: str                  # what URLs, results and /healthz call it
    source: str                # a built-in model's name, or a model folder's path
    workers: int               # workers `make run` starts for it
    prefix: str                # the key prefix of its queue, workers and results
    aliases: tuple[str, ...] = field(default=())  # other names a URL may use for it (MODEL=auto: each real one)


def name_for(source: str) -> str:
    from imgq.models.folder import is_folder, name_of
    return name_of(source) if is_folder(source) else source


def deployment() -> list[ServedModel]:
    """The served models, the default first."""
    if not settings.MODELS:
        from imgq.models.registry import REAL_MODELS
        aliases = tuple(REAL_MODELS) if settings.MODEL == "auto" else ()
        return [ServedModel(name_for(settings.MODEL), settings.MODEL, settings.WORKERS, settings.KEY_PREFIX,
                            aliases)]
    return [ServedModel(name, source, workers or settings.WORKERS, keys.model_prefix(name))
            for name, source, workers in settings.parse_models(settings.MODELS)]

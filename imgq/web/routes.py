"""Request → the model that answers it: each served model's queue, result waiter and input size.

POST /predict?model=<name> (default: the first model), /v2/models/<name>/..., /v1/models/<name>:... all look
their model up here; a name not served is a 404 in the endpoint's own shape. The input size comes from each
model's own definition (a folder's config.json or model file, a built-in's table), read without TensorFlow.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from imgq import models, settings
from imgq.errors import ModelUnavailable, ServiceError
from imgq.jobs.connection import RedisClient
from imgq.jobs.queue import JobQueue
from imgq.jobs.records import Records
from imgq.jobs.results import ResultWaiter
from imgq.models.served import ServedModel, deployment


class UnknownModel(ServiceError):
    status = 404


@dataclass
class Route:
    model: ServedModel
    queue: JobQueue
    waiter: ResultWaiter
    input_size: tuple[int, int]
    records: Records  # its asynchronous jobs' records (GET and DELETE /jobs/<id>, Prefer: respond-async)
    _labels: list[str] | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def labels(self) -> list[str]:
        """The model's class names (a folder's labels.txt, ImageNet's for a built-in), read once."""
        if self._labels is None:
            from imgq.models import folder
            self._labels = folder.labels(self.model.source) if folder.is_folder(self.model.source) \
                else models.imagenet_labels()
        return self._labels


class Routes:
    def __init__(self, client: RedisClient, wait_client: RedisClient) -> None:
        self.routes: list[Route] = []
        for served in deployment():
            try:
                size = models.input_size(served.source)
            except ModelUnavailable as exc:
                # One line naming the model and what is wrong, as a worker would say it: not a traceback.
                settings.refuse("MODELS" if settings.MODELS else "MODEL", served.source, f"a model to serve ({exc})")
                settings.check("web", code=3)
                raise
            self.routes.append(Route(served, JobQueue(client, served.prefix),
                                     ResultWaiter(wait_client, served.prefix), size, Records(client, served.prefix)))
        self.default = self.routes[0]

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    @property
    def names(self) -> list[str]:
        return [name for r in self.routes for name in (r.name, *r.model.aliases)]

    def get(self, name: str | None) -> Route:
        """The route of model `name` (None: the default); UnknownModel (404) for a name not served."""
        if name is None:
            return self.default
        for route in self.routes:
            if name == route.name or name in route.model.aliases:
                return route
        raise UnknownModel(f"unknown model {name[:80]!r}: this server serves {', '.join(self.names)}")

    def start(self) -> None:
        for route in self.routes:
            route.waiter.start()

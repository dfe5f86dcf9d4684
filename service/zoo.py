"""The ``neuronatlas.v1.ZooService`` servicer: the zoo is maintained through the service.

Two groups of thin methods, one module each:

- ``zoo_catalogue.py``: RegisterModel, UpdateModel, UploadArtifact, RegisterProbeSet,
  ListProbeSets, GetSampleImages (catalogue entries, content-addressed uploads, probe sets);
- ``zoo_operations.py``: IndexModel and the operation calls (Get / List / Cancel / Wait), and
  the worker side (ClaimJob / ReportJob) of the job queue in ``neuronatlas.core.jobs``.

Both work on one :class:`ZooContext` that the server builds once.
"""

from __future__ import annotations

from dataclasses import dataclass

from neuronatlas.core.artifacts import ArtifactStore
from neuronatlas.core.config import Home
from neuronatlas.core.jobs import JobQueue
from neuronatlas.core.queries import Atlas
from neuronatlas.service.paging import PageTokens
from neuronatlas.service.zoo_catalogue import CatalogueMethods
from neuronatlas.service.zoo_operations import OperationMethods
from neuronatlas.v1 import zoo_pb2_grpc


@dataclass
class ZooContext:
    """What the zoo methods share: the atlas (store + embedder), the home (probe sets, runs,
    caches), the job queue, the uploaded artifacts (its ``max_bytes`` is the upload limit,
    setting ``max_upload_bytes``) and the page-token key."""

    atlas: Atlas
    home: Home
    queue: JobQueue
    artifacts: ArtifactStore
    pages: PageTokens
    # RegisterModel / IndexModel may register "python" sources (code the server runs): only
    # when the operator says so (setting allow_python_sources)
    allow_python_sources: bool = False


class ZooServicer(CatalogueMethods, OperationMethods, zoo_pb2_grpc.ZooServiceServicer):
    """Implements ``neuronatlas.v1.ZooService``."""

    def __init__(self, ctx: ZooContext):
        self.ctx = ctx

"""ZooService catalogue methods (see ``zoo.py``). To be implemented."""

from __future__ import annotations


class CatalogueMethods:
    """RegisterModel, UpdateModel, UploadArtifact, RegisterProbeSet, ListProbeSets,
    GetSampleImages."""

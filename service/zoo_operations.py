"""ZooService operation methods (see ``zoo.py``). To be implemented."""

from __future__ import annotations


class OperationMethods:
    """IndexModel, GetOperation, ListOperations, CancelOperation, WaitOperation, ClaimJob,
    ReportJob."""

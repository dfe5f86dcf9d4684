"""Knowledge store: one interface (``KnowledgeStore``), two backends chosen by configuration."""

from __future__ import annotations

from neuronatlas.core.config import Settings
from neuronatlas.core.store.base import Hit, KnowledgeStore, LabelScope, SearchFilter

__all__ = ["Hit", "KnowledgeStore", "LabelScope", "SearchFilter", "open_store"]


def open_store(settings: Settings) -> KnowledgeStore:
    """Open (creating if needed) the store named by ``settings``."""
    if settings.backend == "edge":
        from neuronatlas.core.store.edge import EdgeStore

        store = EdgeStore(settings.edge_path, search_threads=settings.edge_search_threads)
        store.quantization = settings.edge_quantization
        store.vector_datatype = settings.edge_vector_datatype
        store.vector_memory = settings.edge_vector_memory
        store.search_ef = settings.search_ef
        return store
    from neuronatlas.core.store.remote import RemoteStore

    remote = RemoteStore.from_settings(settings)
    remote.search_ef = settings.search_ef
    return remote

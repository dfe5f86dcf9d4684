"""Configuration: which store backend, where, and which embedder.

Precedence (highest first): explicit arguments (CLI flags) > environment variables
(``NEURONATLAS_*``) > config file (``--config`` / ``NEURONATLAS_CONFIG`` /
``$NEURONATLAS_HOME/config.toml``) > defaults. Code never branches on the backend outside
``neuronatlas.core.store``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from neuronatlas.core.errors import InvalidArgument

ENV_PREFIX = "NEURONATLAS_"
MAX_SEARCH_EF = 4096  # search_ef: the widest beam a setting may ask for


def default_home() -> Path:
    env = os.environ.get("NEURONATLAS_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("neuronatlas"))


@dataclass(frozen=True)
class Home:
    """The layout of a NeuronAtlas home directory (the one place that spells it out):

    <root>/config.toml                      settings file
    <root>/store/                           embedded (edge) store, unless ``store_dir`` is set
    <root>/probes/<name>.json               registered probe sets
    <root>/cache/embeddings/                probe-set CLIP embeddings (.npy + .json)
    <root>/cache/labels/                    prompt embeddings of label vocabularies
    <root>/cache/compare/<a>__<b>/          cached model comparisons
    <root>/runs/<model_id>/                 checkpoints of an unfinished indexing run
    <root>/artifacts/<sha256>[.json|.d/]    uploaded files (content-addressed), unpacked archives
    <root>/sketches/<model_id>/gen<N>.npz   activation sketches
    <root>/page_token.key                   the server's page-token key (unless set)
    <root>/transfers/migrate-<key>.json     checkpoint of an unfinished `migrate`
    """

    root: Path
    store_dir: Path | None = None  # overrides <root>/store (Settings.store_path)

    @classmethod
    def of(cls, home: Home | str | os.PathLike[str]) -> Home:
        """``home`` itself, or the Home rooted at a directory path."""
        return home if isinstance(home, Home) else cls(Path(home))

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def store(self) -> Path:
        return self.store_dir if self.store_dir is not None else self.root / "store"

    @property
    def probes(self) -> Path:
        return self.root / "probes"

    def probe_file(self, name: str) -> Path:
        return self.probes / f"{name}.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def embeddings_cache(self) -> Path:
        return self.cache / "embeddings"

    @property
    def labels_cache(self) -> Path:
        return self.cache / "labels"

    @property
    def compare_cache(self) -> Path:
        return self.cache / "compare"

    def compare_dir(self, model_a: str, model_b: str) -> Path:
        return self.compare_cache / f"{model_a}__{model_b}"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def run_dir(self, model_id: str) -> Path:
        return self.runs / model_id

    @property
    def sketches(self) -> Path:
        return self.root / "sketches"

    def sketch_dir(self, model_id: str) -> Path:
        return self.sketches / model_id

    @property
    def page_token_key(self) -> Path:
        return self.root / "page_token.key"

    @property
    def transfers(self) -> Path:
        return self.root / "transfers"


HomeLike = Home | str | os.PathLike[str]


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=default_home)
    backend: str = "edge"  # "edge" (embedded Qdrant Edge) or "remote" (Qdrant server / cluster)
    store_path: Path | None = None  # edge store directory; default <home>/store
    url: str = ""  # remote: http(s)://host:6333 or ":memory:" (test double)
    api_key: str = ""
    prefer_grpc: bool = True
    tls: bool = False
    collection_prefix: str = "neuronatlas"
    shard_number: int = 1
    replication_factor: int = 1
    embedder: str = "open_clip:ViT-B-32:openai"  # spec, see neuronatlas.core.embedder
    device: str = "auto"
    # secret the server derives its page-token key from (share it between replicas); unset:
    # a key kept in <home>/page_token.key (neuronatlas.service.paging)
    page_token_key: str = ""
    # indexing threads of `serve` (IndexModel operations); 0: queue only (remote workers,
    # `neuronatlas worker`, run the jobs; they need the remote backend)
    index_workers: int = 1
    # largest file a client may upload to the server (UploadArtifact), in bytes
    max_upload_bytes: int = 2 << 30
    # let RegisterModel / IndexModel callers register "python" sources (a factory is code the
    # server runs: only for servers whose write tokens are trusted like admins)
    allow_python_sources: bool = False
    # `serve`: Prometheus metrics on http://<host of --address>:<port>/metrics; 0: off
    metrics_port: int = 0
    # `serve`: log lines as "text" or "json" (one object per line, with the call's request id)
    log_format: str = "text"
    # edge backend, for a NEW store (an existing one keeps how it was created): "turbo4"
    # (TurboQuant 4-bit codes; the HNSW graph is built and walked on them, answers rescored on
    # the originals), "int8" (scalar int8 codes instead) or "none"; vectors stored as
    # "float32" (float16 is refused: see validate), and their files "cached" (read into the
    # page cache at open) or "cold" (read on first use). See bench/results/store.md.
    edge_quantization: str = "turbo4"
    edge_vector_datatype: str = "float32"
    edge_vector_memory: str = "cached"
    # edge backend: threads of each shard's search pool (0: one per CPU). One suits a server,
    # which runs many queries at once; more lowers one query's latency on a many-segment store.
    edge_search_threads: int = 1
    # both backends: the HNSW search beam (ef) of every approximate search, applied at every
    # open: wider finds more of the true nearest neighbours, slower. At 1M neurons (turbo4,
    # bench/results/store.md) ef 64 / 96 / 128: recall@10 0.947 / 0.965 / 0.983, p50 0.50 /
    # 0.52 / 0.62 ms
    search_ef: int = 128

    @property
    def paths(self) -> Home:
        """The home layout (with ``store_path`` as the store location when set)."""
        return Home(self.home, self.store_path)

    @property
    def edge_path(self) -> Path:
        return self.paths.store

    @property
    def cache_dir(self) -> Path:
        return self.paths.cache

    def redacted(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for secret in ("api_key", "page_token_key"):
            if d[secret]:
                d[secret] = "***"
        return d


_TYPES = {f.name: f.type for f in fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    if value is None:
        return None
    kind = str(_TYPES[name])
    try:
        if "Path" in kind:
            return Path(str(value)).expanduser()
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if kind == "int":
            number = int(value)
            if name == "metrics_port" and not 0 <= number <= 65535:
                raise ValueError(number)
            if name in {"shard_number", "replication_factor", "max_upload_bytes"} and number < 1:
                raise ValueError(number)
            if name == "index_workers" and not 0 <= number <= 64:
                raise ValueError(number)
            return number
    except ValueError:
        raise InvalidArgument(
            f"setting {name}={value!r} is not a valid {kind}", field=name
        ) from None
    return str(value)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, a TOML file, the environment and explicit overrides."""
    values: dict[str, Any] = {}
    home_env = os.environ.get("NEURONATLAS_HOME")
    home = (
        Path(overrides["home"])
        if overrides.get("home")
        else (Path(home_env) if home_env else default_home())
    )
    explicit = config_file or os.environ.get("NEURONATLAS_CONFIG")
    path = Path(explicit or Home(home).config_file).expanduser()
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgument(
                f"config file {path} is not valid TOML: {e}", field="config"
            ) from None
        data = data.get("neuronatlas", data)
        for k, v in data.items():
            if k not in _TYPES:
                raise InvalidArgument(f"unknown setting {k!r} in {path}", field="config")
            values[k] = _coerce(k, v)
    elif explicit:
        raise InvalidArgument(f"config file {path} does not exist", field="config")
    for name in _TYPES:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env is not None and env != "":
            values[name] = _coerce(name, env)
    for k, v in overrides.items():
        if k not in _TYPES:
            raise InvalidArgument(f"unknown setting {k!r}", field=k)
        if v is not None:
            values[k] = _coerce(k, v)
    settings = replace(Settings(), **values)
    if settings.log_format not in {"text", "json"}:
        raise InvalidArgument(
            f"log_format must be 'text' or 'json', not {settings.log_format!r}", field="log_format"
        )
    if settings.edge_quantization not in {"int8", "turbo4", "none"}:
        raise InvalidArgument(
            "edge_quantization must be 'int8', 'turbo4' or 'none', "
            f"not {settings.edge_quantization!r}",
            field="edge_quantization",
        )
    if settings.edge_vector_datatype == "float16":
        # measured (bench/results/store.md, issue 13): a 1M-neuron float16 store of Qdrant Edge
        # 0.9 answered 64 of 100 one-model filtered searches with 1-9 hits instead of 10 (the
        # same data stored as float32: all 100 complete), so new stores do not offer it
        raise InvalidArgument(
            "edge_vector_datatype 'float16' is not offered: at 1M neurons Qdrant Edge answered "
            "most one-model filtered searches of a float16 store with too few hits "
            "(bench/results/store.md); use 'float32' (existing float16 stores still open)",
            field="edge_vector_datatype",
        )
    if settings.edge_vector_datatype != "float32":
        raise InvalidArgument(
            f"edge_vector_datatype must be 'float32', not {settings.edge_vector_datatype!r}",
            field="edge_vector_datatype",
        )
    if settings.edge_vector_memory not in {"cached", "cold"}:
        raise InvalidArgument(
            f"edge_vector_memory must be 'cached' or 'cold', not {settings.edge_vector_memory!r}",
            field="edge_vector_memory",
        )
    if not 0 <= settings.edge_search_threads <= 1024:
        raise InvalidArgument(
            f"edge_search_threads must be 0..1024, not {settings.edge_search_threads}",
            field="edge_search_threads",
        )
    if not 1 <= settings.search_ef <= MAX_SEARCH_EF:
        raise InvalidArgument(
            f"search_ef must be 1..{MAX_SEARCH_EF}, not {settings.search_ef}", field="search_ef"
        )
    if settings.backend not in {"edge", "remote"}:
        raise InvalidArgument(
            f"backend must be 'edge' or 'remote', not {settings.backend!r}", field="backend"
        )
    if settings.backend == "remote" and not settings.url:
        raise InvalidArgument(
            "the remote backend needs a url (--url / NEURONATLAS_URL)", field="url"
        )
    return settings

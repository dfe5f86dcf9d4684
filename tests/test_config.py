"""Settings precedence (flags > env > file > defaults) and configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuronatlas.core.config import Settings, load_settings
from neuronatlas.core.errors import InvalidArgument


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults(home: Path):
    s = load_settings()
    assert s.home == home and s.backend == "edge"
    assert s.edge_path == home / "store" and s.cache_dir == home / "cache"
    assert s.embedder == Settings.embedder and s.prefer_grpc is True and s.shard_number == 1


def test_file_in_home_is_read(home: Path):
    write(
        home / "config.toml",
        '[neuronatlas]\nembedder = "open_clip:RN50:openai"\nshard_number = 3\ntls = true\n',
    )
    s = load_settings()
    assert s.embedder == "open_clip:RN50:openai" and s.shard_number == 3 and s.tls is True
    assert s.backend == "edge"  # untouched keys keep their defaults


def test_file_without_table_header(home: Path):
    write(home / "config.toml", 'device = "cpu"\nstore_path = "~/somewhere"\n')
    s = load_settings()
    assert s.device == "cpu" and s.store_path == Path("~/somewhere").expanduser()
    assert s.edge_path == s.store_path


def test_precedence_flags_over_env_over_file(home: Path, monkeypatch: pytest.MonkeyPatch):
    write(
        home / "config.toml",
        '[neuronatlas]\ndevice = "file"\nembedder = "file-emb"\ncollection_prefix = "file"\n',
    )
    monkeypatch.setenv("NEURONATLAS_DEVICE", "env")
    monkeypatch.setenv("NEURONATLAS_EMBEDDER", "env-emb")
    s = load_settings(device="flag", embedder=None)
    assert s.device == "flag"  # flag beats env and file
    assert s.embedder == "env-emb"  # a flag left as None does not override
    assert s.collection_prefix == "file"  # only the file sets it


def test_env_types_are_coerced(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEURONATLAS_PREFER_GRPC", "0")
    monkeypatch.setenv("NEURONATLAS_TLS", "yes")
    monkeypatch.setenv("NEURONATLAS_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("NEURONATLAS_STORE_PATH", str(home / "x"))
    monkeypatch.setenv("NEURONATLAS_API_KEY", "")  # empty: ignored
    s = load_settings()
    assert s.prefer_grpc is False and s.tls is True and s.replication_factor == 2
    assert s.store_path == home / "x" and s.api_key == ""


def test_explicit_config_file_and_env_config(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    write(home / "config.toml", 'device = "home"\n')
    via_env = write(tmp_path / "env.toml", 'device = "env-file"\n')
    explicit = write(tmp_path / "explicit.toml", 'device = "explicit"\n')
    assert load_settings().device == "home"
    monkeypatch.setenv("NEURONATLAS_CONFIG", str(via_env))
    assert load_settings().device == "env-file"
    assert load_settings(config_file=explicit).device == "explicit"


def test_home_flag_locates_its_config(home: Path, tmp_path: Path):
    other = tmp_path / "other-home"
    other.mkdir()
    write(other / "config.toml", 'device = "other"\n')
    s = load_settings(home=other)
    assert s.home == other and s.device == "other" and s.edge_path == other / "store"


def test_remote_backend(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEURONATLAS_BACKEND", "remote")
    with pytest.raises(InvalidArgument, match="url"):
        load_settings()
    s = load_settings(url="http://qdrant:6333", api_key="secret")
    assert s.backend == "remote" and s.url == "http://qdrant:6333"
    assert s.redacted()["api_key"] == "***" and "secret" not in repr(s.redacted())


@pytest.mark.parametrize(
    "text, field",
    [
        ("bogus = 1\n", "config"),
        ("[neuronatlas\nx=", "config"),
        ('shard_number = "many"\n', "shard_number"),
        ('backend = "sqlite"\n', "backend"),
    ],
    ids=["unknown-key", "bad-toml", "bad-int", "bad-backend"],
)
def test_file_errors(home: Path, text: str, field: str):
    write(home / "config.toml", text)
    with pytest.raises(InvalidArgument) as e:
        load_settings()
    assert e.value.field == field


def test_flag_and_env_errors(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.toml")
    with pytest.raises(InvalidArgument):
        load_settings(colour="blue")
    monkeypatch.setenv("NEURONATLAS_SHARD_NUMBER", "two")
    with pytest.raises(InvalidArgument):
        load_settings()


def test_missing_env_config_file_is_an_error(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("NEURONATLAS_CONFIG", str(tmp_path / "typo.toml"))
    with pytest.raises(InvalidArgument):
        load_settings()


def test_invalid_bool_is_an_error(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEURONATLAS_TLS", "ture")
    with pytest.raises(InvalidArgument):
        load_settings()


@pytest.mark.parametrize("name", ["SHARD_NUMBER", "REPLICATION_FACTOR"])
def test_cluster_sizes_must_be_positive(home: Path, monkeypatch: pytest.MonkeyPatch, name: str):
    monkeypatch.setenv(f"NEURONATLAS_{name}", "0")
    with pytest.raises(InvalidArgument):
        load_settings()

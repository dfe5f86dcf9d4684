"""The committed generated code matches protos/, and the protos pass `buf lint`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _drop_json_names(message) -> None:
    for f in message.field:
        f.ClearField("json_name")
    for nested in message.nested_type:
        _drop_json_names(nested)


PROTO_FILES = ("neuronatlas", "zoo", "admin")


@pytest.mark.parametrize("stem", PROTO_FILES)
def test_generated_code_is_up_to_date(tmp_path: Path, stem: str) -> None:
    """Regenerate into a temp dir: the committed files must match byte for byte when this
    grpcio-tools is the version that generated them, and describe the same schema otherwise."""
    pytest.importorskip("grpc_tools")
    import importlib
    from importlib.metadata import version

    from google.protobuf import descriptor_pb2

    pb2 = importlib.import_module(f"neuronatlas.v1.{stem}_pb2")
    pb2_grpc = importlib.import_module(f"neuronatlas.v1.{stem}_pb2_grpc")

    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True, env=env
    )
    descriptor_set = tmp_path / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO / "protos"),
            f"--descriptor_set_out={descriptor_set}",
            f"neuronatlas/v1/{stem}.proto",
        ],
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file[0]
    for message in fresh.message_type:  # the python gencode leaves out derived json names
        _drop_json_names(message)
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb2.DESCRIPTOR.serialized_pb)
    assert fresh == committed, "neuronatlas/v1 is stale: run scripts/gen_protos.sh"
    if version("grpcio-tools") != pb2_grpc.GRPC_GENERATED_VERSION:
        return  # another generator version formats the files differently; the schema matched
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
        name = stem + suffix
        new = (tmp_path / "neuronatlas" / "v1" / name).read_text()
        old = (REPO / "neuronatlas" / "v1" / name).read_text()
        assert new == old, f"neuronatlas/v1/{name} is stale: run scripts/gen_protos.sh"


def test_generated_code_imports_as_package() -> None:
    from neuronatlas.v1 import neuronatlas_pb2, neuronatlas_pb2_grpc

    service = neuronatlas_pb2.DESCRIPTOR.services_by_name["NeuronAtlasService"]
    assert service.full_name == "neuronatlas.v1.NeuronAtlasService"
    assert {m.name for m in service.methods} == {
        "SearchNeurons",
        "BatchSearchNeurons",
        "GetNeuron",
        "DescribeNeuron",
        "FindNeuronsByLabel",
        "ListModels",
        "GetModel",
        "DeleteModel",
        "GetStats",
        "VerifyStore",
        "CompareModels",
        "AuditModel",
        "ExplainClass",
    }
    assert hasattr(neuronatlas_pb2_grpc, "NeuronAtlasServiceStub")


def test_read_methods_have_no_side_effects() -> None:
    from google.protobuf import descriptor_pb2

    from neuronatlas.v1 import neuronatlas_pb2

    service = neuronatlas_pb2.DESCRIPTOR.services_by_name["NeuronAtlasService"]
    for method in service.methods:
        level = method.GetOptions().idempotency_level
        if method.name == "DeleteModel":
            assert level == descriptor_pb2.MethodOptions.IDEMPOTENT
        else:
            assert level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, method.name


def _buf() -> str:
    found = shutil.which("buf") or shutil.which("buf", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("buf binary not found (pip install buf-bin)")
    return found


def test_buf_lint_clean() -> None:
    result = subprocess.run([_buf(), "lint"], cwd=REPO / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

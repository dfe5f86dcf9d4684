"""The committed generated code matches protos/, and the protos pass `buf lint`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERATED = ("neuronatlas_pb2.py", "neuronatlas_pb2.pyi", "neuronatlas_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(REPO / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True, env=env)
    for name in GENERATED:
        fresh = (tmp_path / "neuronatlas" / "v1" / name).read_text()
        committed = (REPO / "neuronatlas" / "v1" / name).read_text()
        assert fresh == committed, f"neuronatlas/v1/{name} is stale: run scripts/gen_protos.sh"


def test_generated_code_imports_as_package() -> None:
    from neuronatlas.v1 import neuronatlas_pb2, neuronatlas_pb2_grpc

    service = neuronatlas_pb2.DESCRIPTOR.services_by_name["NeuronAtlasService"]
    assert service.full_name == "neuronatlas.v1.NeuronAtlasService"
    assert {m.name for m in service.methods} == {
        "SearchNeurons", "GetNeuron", "DescribeNeuron", "FindNeuronsByLabel",
        "ListModels", "GetModel", "DeleteModel", "GetStats",
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

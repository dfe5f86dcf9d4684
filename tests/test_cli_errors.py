"""The CLI and server start-up fail in one line, never a traceback: exit code 2 and a single
stderr line that says what to fix, for a busy port, a malformed address, TLS files that are not
a usable PEM pair, a --home that is a regular file, a --out under a regular file and a store on
a read-only file system. Each case runs the real command in a subprocess
(``python -m neuronatlas.cli ...``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import TINY_EMBEDDER

from neuronatlas.service.server import TlsConfig, build_server, check_bindable

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, home: Path, timeout: float = 60, code: str | None = None):
    """``neuronatlas --home HOME ARGS...`` in a fresh interpreter (``code``: Python run first,
    in the same process, e.g. to fake a read-only file system)."""
    env = {
        **os.environ,
        "NEURONATLAS_HOME": str(home),
        "NEURONATLAS_EMBEDDER": TINY_EMBEDDER,
        "NEURONATLAS_SERVER": "",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("NEURONATLAS_PAGE_TOKEN_KEY", None)
    argv = ["--home", str(home), *args]
    if code is None:
        cmd = [sys.executable, "-m", "neuronatlas.cli", *argv]
    else:
        runner = code + f"\nimport sys\nsys.argv = ['neuronatlas', *{argv!r}]\n"
        runner += "from neuronatlas.cli import main\nmain()\n"
        cmd = [sys.executable, "-c", runner]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    return proc, time.monotonic() - started


def fails_in_one_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, line
    return line


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two self-signed certificate / key pairs ("a", "b")."""
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl not found")
    out = tmp_path_factory.mktemp("pems")
    files = {}
    for name in ("a", "b"):
        cert, key = out / f"{name}.crt", out / f"{name}.key"
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
        )
        files[f"{name}.crt"], files[f"{name}.key"] = cert, key
    return files


# -- serve -------------------------------------------------------------------------------------
def test_serve_on_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, _ = run_cli(
            "serve", "--no-embedder", "--address", f"127.0.0.1:{port}", home=tmp_path / "h"
        )
    fails_in_one_line(proc, "already in use", str(port))


ADDRESSES = {
    "nonsense": "HOST:PORT",
    "127.0.0.1:99999": "0-65535",
    "localhost:http": "HOST:PORT",
    ":50051": "HOST:PORT",
    "8.8.8.8:50051": "not an address of this machine",
}


def test_serve_on_a_malformed_address(tmp_path: Path) -> None:
    for address in ("nonsense", "127.0.0.1:99999"):
        proc, _ = run_cli("serve", "--no-embedder", "--address", address, home=tmp_path / "h")
        fails_in_one_line(proc, ADDRESSES[address])


@pytest.mark.parametrize("address", list(ADDRESSES))
def test_address_check(address: str) -> None:
    from neuronatlas.core.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=ADDRESSES[address]) as e:
        check_bindable(address)
    assert e.value.field == "address"


def test_serve_with_tls_files_that_do_not_work(tmp_path: Path, pems) -> None:
    cert, key, other_key = pems["a.crt"], pems["a.key"], pems["b.key"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    cases = [
        ((cert, other_key, None), "does not belong to the certificate"),
        ((garbage, key, None), "not a usable PEM pair"),
        ((text, key, None), "is not a PEM certificate"),
        ((cert, text, None), "is not a PEM private key"),
        ((cert, key, text), "client CA"),
    ]
    from neuronatlas.core.errors import InvalidArgument

    for (c, k, ca), words in cases:
        with pytest.raises(InvalidArgument, match=words):
            TlsConfig(c, k, ca).check()
    for (c, k, _), words in cases[:2]:  # and the command, end to end
        args = ["serve", "--no-embedder", "--address", "127.0.0.1:0"]
        args += ["--tls-cert", str(c), "--tls-key", str(k)]
        proc, took = run_cli(*args, home=tmp_path / "h")
        fails_in_one_line(proc, words)
        assert took < 8, f"{took:.1f} s: refused up front, not after gRPC's bind attempt"


def test_tls_check_in_the_library(pems) -> None:
    """build_server refuses a mismatched pair before binding (no 8-second wait)."""
    from neuronatlas.core.errors import InvalidArgument

    started = time.monotonic()
    with pytest.raises(InvalidArgument, match="does not belong") as e:
        build_server(object(), "127.0.0.1:0", tls=TlsConfig(pems["a.crt"], pems["b.key"]))  # type: ignore[arg-type]
    assert e.value.field == "tls" and time.monotonic() - started < 5


# -- paths -------------------------------------------------------------------------------------
def test_home_is_a_regular_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a directory")
    for args in (["models"], ["search", "dog"]):
        proc, _ = run_cli(*args, home=home)
        fails_in_one_line(proc, "--home", "is a file, not a directory")


def test_show_out_under_a_regular_file(tmp_path: Path, indexed_home: Path) -> None:
    # a copy of the indexed home: the session's server holds the original store's lock
    home = tmp_path / "home"
    shutil.copytree(indexed_home, home, ignore=shutil.ignore_patterns(".lock", "cache"))
    blocker = tmp_path / "report"
    blocker.write_text("a regular file")
    proc, _ = run_cli(
        "show", "resnet20/layer3.0.conv2/0", "--out", str(blocker / "grid.png"), home=home
    )
    fails_in_one_line(proc, str(blocker))


READ_ONLY_LOCK = textwrap.dedent(
    """
    import errno, os
    _open = os.open
    def _read_only(path, flags, *args, **kwargs):
        if str(path).endswith(".lock") and flags & (os.O_CREAT | os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return _open(path, flags, *args, **kwargs)
    os.open = _read_only
    """
)


def test_store_on_a_read_only_file_system(tmp_path: Path) -> None:
    """The store's lock file cannot be created (EROFS, faked in the child process: a real
    read-only mount needs privileges): one line naming the file and the fix."""
    home = tmp_path / "home"
    home.mkdir()
    for args in (["models"], ["serve", "--no-embedder", "--address", "127.0.0.1:0"]):
        proc, _ = run_cli(*args, home=home, code=READ_ONLY_LOCK)
        fails_in_one_line(proc, ".lock", "read-only")

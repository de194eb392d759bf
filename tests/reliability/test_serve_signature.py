"""Issue 27: `earlytom serve --require-signature PUB` refuses to start on an engine directory that is unsigned, signed
by another key or changed after signing (one `error:` line, exit 2, before any port is taken), and starts on one
signed by the key. Signatures are made here with `cryptography` over manifest.json's bytes (the documented format)."""

import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from reliability_support import assert_one_error, child_env, command, terminal_signals

from earlytom.cli import main as earlytom_main

pytest.importorskip("uvicorn", reason="earlytom serve needs the [serve] extra")

BUILDER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def public_file(directory: Path, key: Ed25519PrivateKey) -> Path:
    path = directory / f"{id(key)}.pub"
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def signed_copy(engine: Path, target: Path, key: Ed25519PrivateKey) -> Path:
    copy = shutil.copytree(engine, target)
    (copy / "manifest.sig").write_bytes(key.sign((copy / "manifest.json").read_bytes()))
    return copy


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("case", ["unsigned", "other key", "manifest changed after signing"])
def test_serve_refuses_a_directory_not_signed_by_the_key(engine, tmp_path, case, capsys):
    directory = (
        engine
        if case == "unsigned"
        else signed_copy(engine, tmp_path / "engine", OTHER if case == "other key" else BUILDER)
    )
    if case == "manifest changed after signing":
        manifest = directory / "manifest.json"
        manifest.write_bytes(manifest.read_bytes().replace(b"\n", b" \n", 1))
    port = free_port()
    argv = ["serve", "--engine", str(directory), "--require-signature", str(public_file(tmp_path, BUILDER))]
    assert earlytom_main([*argv, "--port", str(port)]) == 2
    needle = "is not signed;" if case == "unsigned" else "is not signed by this key"
    assert_one_error(capsys.readouterr().err, str(directory), needle)
    with socket.socket() as probe:  # the port was never taken: the check comes first
        probe.bind(("127.0.0.1", port))


def test_serve_refuses_the_option_without_an_engine(tmp_path, capsys):
    assert earlytom_main(["serve", "--model", "tiny", "--require-signature", str(public_file(tmp_path, BUILDER))]) == 2
    assert_one_error(capsys.readouterr().err, "--require-signature applies to an --engine directory")


def test_serve_starts_on_a_directory_signed_by_the_key(engine, tmp_path):
    directory = signed_copy(engine, tmp_path / "engine", BUILDER)
    port = free_port()
    argv = command(
        "earlytom.cli", "serve", "--engine", str(directory), "--port", str(port),
        "--require-signature", str(public_file(tmp_path, BUILDER)),
    )  # fmt: skip
    child = subprocess.Popen(argv, env=child_env(), stderr=subprocess.PIPE, text=True, preexec_fn=terminal_signals)
    try:
        deadline, status = time.monotonic() + 240, None
        while status is None and child.poll() is None and time.monotonic() < deadline:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status
            except OSError:
                time.sleep(0.5)
        assert status == 200, child.stderr.read() if child.poll() is not None else "no answer on /health"
    finally:
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=60)


def test_every_load_of_the_served_directory_checks_the_signature(engine, tmp_path):
    """The key travels with the model description (Ray builds it again in each replica): each load verifies."""
    from earlytom.engine.manifest import EngineDirError
    from earlytom.serve.model import ModelSpec

    key = public_file(tmp_path, BUILDER)
    signed = signed_copy(engine, tmp_path / "signed", BUILDER)
    assert ModelSpec(engine=signed, trusted_key=key).load() is not None
    with pytest.raises(EngineDirError, match="is not signed by this key"):
        ModelSpec(engine=signed_copy(engine, tmp_path / "other", OTHER), trusted_key=key).load()
    with pytest.raises(ValueError, match="applies to an --engine directory"):
        ModelSpec(model="tiny", trusted_key=key)

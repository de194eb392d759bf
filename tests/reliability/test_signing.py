"""Issue 27: engine directories signed with ed25519 (build_engine --sign KEY, earlytom verify --key PUB, run
--require-signature PUB, Pipeline.from_engine_dir(trusted_key=...)). A signed directory verifies; a one-byte
change to any of its files fails: the hashes for a listed file, the signature for manifest.json and manifest.sig;
unsigned, wrongly signed and wrongly keyed directories are refused with one error line."""

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from reliability_support import assert_one_error

from earlytom.cli import main as earlytom_main
from earlytom.engine.manifest import EngineDirError
from earlytom.engine_builder.build import main as build_main
from earlytom.runtime.pipeline import Pipeline


def write_keys(directory: Path, name: str, key) -> tuple[Path, Path]:
    """`key` as PEM files `name`.pem (private, unencrypted) and `name`.pub (public) in `directory`."""
    private = directory / f"{name}.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = directory / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("keys")
    return {
        "builder": write_keys(root, "builder", Ed25519PrivateKey.generate()),
        "other": write_keys(root, "other", Ed25519PrivateKey.generate()),
        "ec": write_keys(root, "ec", ec.generate_private_key(ec.SECP256R1())),
    }


@pytest.fixture(scope="module")
def signed(keys, tmp_path_factory) -> Path:
    """A tiny engine directory built and signed by build_engine --sign (read-only: copy it to change it)."""
    out = tmp_path_factory.mktemp("signed") / "engine"
    argv = ["--model", "tiny", "--output", str(out), "--frames", "4", "--sign", str(keys["builder"][0])]
    assert build_main(argv) == 0
    return out


def verify(directory: Path, public: Path) -> int:
    return earlytom_main(["verify", "--engine", str(directory), "--key", str(public)])


def test_signed_directory_verifies(signed, keys, capsys):
    public = keys["builder"][1]
    assert verify(signed, public) == 0
    assert str(signed) in capsys.readouterr().out
    # The signature is a plain ed25519 signature over manifest.json's bytes, checkable without earlytom.
    loaded = serialization.load_pem_public_key(public.read_bytes())
    loaded.verify((signed / "manifest.sig").read_bytes(), (signed / "manifest.json").read_bytes())
    assert Pipeline.from_engine_dir(signed, trusted_key=public).backend.manifest.max_frames == 4


def test_one_byte_changed_anywhere_fails(signed, keys, tmp_path, capsys):
    """Every file of the directory in turn, one byte flipped, then restored: each change is refused, by the
    hashes for a listed file and by the signature for the manifest and the signature itself."""
    copy = shutil.copytree(signed, tmp_path / "engine")
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    assert {"manifest.json", "manifest.sig", "vision_head.onnx"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        changed = bytearray(data)
        changed[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(changed))
        assert verify(copy, keys["builder"][1]) == 2, path
        rel = path.relative_to(copy).as_posix()
        needle = "not signed by this key" if rel in ("manifest.json", "manifest.sig") else "does not match its SHA-256"
        assert_one_error(capsys.readouterr().err, str(copy), needle)
        path.write_bytes(data)
    assert verify(copy, keys["builder"][1]) == 0


@pytest.mark.parametrize("case", ["unsigned", "other key", "signature removed", "signature of another manifest"])
def test_wrongly_signed_directories_are_refused(engine, signed, keys, tmp_path, case, capsys):
    directory = engine
    if case != "unsigned":
        directory = shutil.copytree(signed, tmp_path / "engine")
    key = keys["other" if case == "other key" else "builder"][1]
    if case == "signature removed":
        (directory / "manifest.sig").unlink()
    elif case == "signature of another manifest":  # a valid ed25519 signature, of other bytes by another key
        other = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
        (directory / "manifest.sig").write_bytes(other.sign(b"{}"))
    needle = "is not signed" if case in ("unsigned", "signature removed") else "not signed by this key"
    assert verify(directory, key) == 2
    assert_one_error(capsys.readouterr().err, str(directory), needle)
    with pytest.raises(EngineDirError, match=needle):
        Pipeline.from_engine_dir(directory, trusted_key=key)


def test_run_requires_the_signature(engine, signed, keys, clip, capsys):
    argv = ["run", "--video", str(clip), "--prompt", "x", "--max-new-tokens", "1"]
    assert earlytom_main([*argv, "--engine", str(engine), "--require-signature", str(keys["builder"][1])]) == 2
    assert_one_error(capsys.readouterr().err, str(engine), "is not signed")
    assert earlytom_main([*argv, "--engine", str(signed), "--require-signature", str(keys["builder"][1])]) == 0
    assert earlytom_main([*argv, "--require-signature", str(keys["builder"][1])]) == 2  # no --engine
    assert_one_error(capsys.readouterr().err, "--require-signature")


@pytest.mark.parametrize("which", ["ec", "missing", "private as public"])
def test_bad_keys_are_named(signed, keys, tmp_path, which, capsys):
    key = {"ec": keys["ec"][1], "missing": tmp_path / "none.pub", "private as public": keys["builder"][0]}[which]
    assert verify(signed, key) == 2
    needle = {"ec": "not an ed25519 key", "missing": "cannot read the public key", "private as public": "PEM"}[which]
    assert_one_error(capsys.readouterr().err, str(key), needle)


def test_build_refuses_a_bad_signing_key_before_building(keys, tmp_path, capsys):
    out = tmp_path / "engine"
    assert build_main(["--model", "tiny", "--output", str(out), "--frames", "4", "--sign", str(keys["ec"][0])]) == 2
    assert_one_error(capsys.readouterr().err, str(keys["ec"][0]), "not an ed25519 key")
    assert not out.exists()

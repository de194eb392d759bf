"""ed25519 signatures of engine directories shared between machines: `manifest.sig` beside manifest.json holds
the 64-byte signature over manifest.json's exact bytes. The manifest holds the SHA-256 of every other file and of
its own canonical form, so the signature covers the whole directory: verify_signature, then read_manifest (the
hashes), proves who built every byte. Keys are PEM files (`openssl genpkey -algorithm ed25519 -out key.pem`;
`openssl pkey -in key.pem -pubout -out key.pub`). The `cryptography` package is imported only when a key is used,
so engine directories open without it where nothing is signed (a GPU machine with only the proof's bundle)."""

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from earlytom.engine.layout import MANIFEST
from earlytom.engine.manifest import SIGNATURE, EngineDirError, Manifest, check_external_data, read_manifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def check_cryptography() -> None:
    """ValueError naming the install command unless the `cryptography` package (the extra `sign`) is installed."""
    if importlib.util.find_spec("cryptography") is None:
        raise ValueError("signatures need the cryptography package: pip install -c constraints.txt 'earlytom[sign]'")


KEYGEN = "openssl genpkey -algorithm ed25519 -out key.pem; openssl pkey -in key.pem -pubout -out key.pub"


def read_key(path: str | Path, kind: str) -> bytes:
    """The bytes of the PEM `kind` key file at `path` (ValueError naming it if it cannot be read)."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the {kind} key {path} ({error.strerror}); make one with: {KEYGEN}") from None


def private_key(path: str | Path) -> "Ed25519PrivateKey":
    """The ed25519 private key in the PEM file `path` (unencrypted); ValueError naming the file otherwise."""
    check_cryptography()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(read_key(path, "private"), password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path} is not an unencrypted PEM private key ({error}); make one with: {KEYGEN}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an ed25519 key; make one with: {KEYGEN}")
    return key


def public_key(path: str | Path) -> "Ed25519PublicKey":
    """The ed25519 public key in the PEM file `path`; ValueError naming the file otherwise."""
    check_cryptography()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(read_key(path, "public"))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a PEM public key ({error}); export one with: {KEYGEN}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an ed25519 key; make one with: {KEYGEN}")
    return key


def sign_dir(directory: Path, key: "Ed25519PrivateKey") -> None:
    """Write `directory`/manifest.sig: `key`'s signature over manifest.json's bytes (written last: the manifest
    must be final)."""
    (Path(directory) / SIGNATURE).write_bytes(key.sign((Path(directory) / MANIFEST).read_bytes()))


def verify_signature(directory: str | Path, key: "Ed25519PublicKey") -> None:
    """EngineDirError unless `directory`/manifest.sig is `key`'s signature over its manifest.json's bytes. Reads
    nothing else: call it before trusting the manifest's content."""
    from cryptography.exceptions import InvalidSignature

    directory = Path(directory)
    signature, manifest = directory / SIGNATURE, directory / MANIFEST
    for path in (signature, manifest):
        if path.is_symlink() or not path.is_file():
            what = "a symbolic link" if path.is_symlink() else "missing"
            raise EngineDirError(
                f"{path} is {what}: {directory} is not signed; ask its builder for a directory made with "
                "build_engine --sign, or drop the signature requirement"
            )
    try:
        key.verify(signature.read_bytes(), manifest.read_bytes())
    except InvalidSignature:
        raise EngineDirError(
            f"{directory} is not signed by this key ({SIGNATURE} does not match {MANIFEST}): it was changed after "
            "signing or signed by someone else; do not run it"
        ) from None


def verify_dir(directory: str | Path, key: "Ed25519PublicKey") -> Manifest:
    """The manifest of `directory` after checking everything: the signature by `key`, the manifest's schema
    and digest, every file's hash, no links, external data inside it (EngineDirError at the first failure)."""
    verify_signature(directory, key)
    manifest = read_manifest(directory)
    check_external_data(Path(directory), manifest)
    return manifest

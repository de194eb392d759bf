"""manifest.json of an engine directory (DESIGN.md section 5): what was built, from what, with which tools,
and the SHA-256 of every artifact. Loading checks all of it and refuses what does not match."""

import hashlib
import importlib.util
import json
import platform
from importlib import metadata
from pathlib import Path

import torch
from packaging.version import Version

FORMAT = "earlytom-engine/1"
MANIFEST = "manifest.json"
TOOLS = ("earlytom", "torch", "transformers", "onnx", "onnxruntime", "onnxconverter-common", "triton")


def missing_gpu_stack() -> list[str]:
    """What the TensorRT backend needs and this machine lacks."""
    missing = [
        f"the {name} Python package" for name in ("tensorrt", "tensorrt_llm") if not importlib.util.find_spec(name)
    ]
    if not torch.cuda.is_available():
        missing.append("an NVIDIA GPU visible to PyTorch")
    return missing


class EngineDirError(ValueError):
    """An engine directory that is missing, incomplete, tampered with, or built for something else."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def artifact_hashes(directory: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `directory` but the manifest, sorted."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(directory).as_posix(): sha256(p) for p in files}


def write_manifest(directory: Path, fields: dict) -> dict:
    """Write manifest.json with `fields`, the tool versions and the hashes of everything in `directory`."""
    manifest = {"format": FORMAT, **fields, "tools": tool_versions(), "artifacts": artifact_hashes(directory)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory: Path, *, expect_model: str | None = None) -> dict:
    """The verified manifest of `directory`: format, every artifact's hash, the model (if `expect_model`)
    and the ONNX Runtime version (not older than the one that verified the graphs)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise EngineDirError(f"{directory} is not an engine directory (no {MANIFEST}); build one with build_engine")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EngineDirError(f"{path} is corrupt ({error}); rebuild the directory with build_engine") from error
    if manifest.get("format") != FORMAT:
        raise EngineDirError(
            f"{directory} has format {manifest.get('format')!r}, this earlytom reads {FORMAT!r}; rebuild it"
        )
    for name, expected in manifest["artifacts"].items():
        artifact = Path(directory) / name
        if not artifact.is_file():
            raise EngineDirError(f"{directory} is incomplete: {name} is missing; rebuild it with build_engine")
        if sha256(artifact) != expected:
            raise EngineDirError(
                f"{directory}/{name} does not match its SHA-256 in {MANIFEST} (modified or corrupt); rebuild it"
            )
    built_for = manifest["model"]["name"]
    if expect_model is not None and expect_model != built_for:
        raise EngineDirError(
            f"{directory} was built for model {built_for!r}, not {expect_model!r}; drop --model or build "
            f"an engine directory for {expect_model!r}"
        )
    built_with = manifest["tools"].get("onnxruntime")
    installed = tool_versions().get("onnxruntime")
    if built_with and installed and Version(installed) < Version(built_with):
        raise EngineDirError(
            f"{directory} was verified with onnxruntime {built_with}; this environment has {installed}. "
            f"Upgrade onnxruntime to >= {built_with} or rebuild the directory here"
        )
    return manifest

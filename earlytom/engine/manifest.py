"""manifest.json of an engine directory: what was built, from what, with which tools, and the SHA-256 of
every file. Reading validates it against the dataclasses below (types, required keys, relative paths), checks
that the files on disk are exactly the listed ones with their hashes, and refuses what does not match."""

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.version import InvalidVersion, Version

from earlytom.compress import EarlyTomConfig
from earlytom.dtypes import GRAPH_DTYPES
from earlytom.engine.layout import (
    DECODER,
    FORMAT,
    MANIFEST,
    PREPROCESSOR,
    TOKENIZER,
    VISUAL_SUFFIX,
    GraphSpec,
    vision_chain,
)
from earlytom.environment import tool_versions
from earlytom.models.backbone import VisionDims

BACKENDS = ("onnxruntime", "tensorrt")
# Files every engine directory has besides its graphs (what every backend opens).
REQUIRED = (VISUAL_SUFFIX, PREPROCESSOR, f"{DECODER}/config.json", f"{TOKENIZER}/tokenizer_config.json")


class EngineDirError(ValueError):
    """An engine directory that is missing, incomplete, tampered with, or built for something else."""


class IncompatibleEngine(EngineDirError):
    """TensorRT plans built for another TensorRT version or GPU architecture."""


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the user asked for
    source: str  # HF id or directory
    config_hash: str  # SHA-256 of the architecture
    random_init: bool


@dataclass(frozen=True)
class TensorRTInfo:
    tensorrt: str
    tensorrt_llm: str
    gpu_arch: str  # sm_XY


@dataclass(frozen=True)
class Manifest:
    format: str
    model: ModelInfo
    earlytom: dict  # EarlyTomConfig.to_dict(), see `config`
    max_frames: int
    vision: VisionDims
    graphs: tuple[GraphSpec, ...]
    backend: str
    dtype: str
    plugin_archs: tuple[str, ...]
    verification_max_rel_error: dict[str, dict[str, float]]
    notes: tuple[str, ...]
    created: str
    tools: dict[str, str]
    artifacts: dict[str, str]  # relative path -> SHA-256
    tensorrt: TensorRTInfo | None = None
    memory_plan: dict | None = None  # earlytom.engine.memory_plan.MemoryPlan.to_dict() of build_engine --target-gpu

    @property
    def config(self) -> EarlyTomConfig:
        return EarlyTomConfig.from_dict(self.earlytom)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def parse(kind, value, where: str):
    """`value` (from JSON) as `kind` (a dataclass or a typing annotation); EngineDirError naming `where`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise EngineDirError(f"{where} must be an object, not {type(value).__name__}")
        fields = {f.name: f for f in dataclasses.fields(kind)}
        hints = typing.get_type_hints(kind)
        unknown = set(value) - set(fields)
        if unknown:
            raise EngineDirError(f"{where} has unknown keys {sorted(unknown)}")
        parsed = {}
        for name, field in fields.items():
            if name not in value:
                if field.default is dataclasses.MISSING:
                    raise EngineDirError(f"{where} lacks the key {name!r}")
                continue
            parsed[name] = parse(hints[name], value[name], f"{where}.{name}")
        return kind(**parsed)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return parse(next(a for a in args if a is not type(None)), value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise EngineDirError(f"{where} must be a list, not {type(value).__name__}")
        item = args[0]
        return tuple(parse(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise EngineDirError(f"{where} must be an object, not {type(value).__name__}")
        return {k: parse(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else value
    if kind is dict:
        if not isinstance(value, dict):
            raise EngineDirError(f"{where} must be an object, not {type(value).__name__}")
        return value
    expected = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}[kind]
    if not isinstance(value, expected) or (kind is not bool and isinstance(value, bool)):
        raise EngineDirError(f"{where} must be {kind.__name__}, not {type(value).__name__} ({value!r})")
    return value


def check_relative(path: str, where: str) -> None:
    """Refuse absolute paths and `..` in a manifest path (a manifest names files inside its directory only)."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\\" in path or not path:
        raise EngineDirError(f"{where} names {path!r}, outside the engine directory")


def check_values(manifest: Manifest) -> None:
    """The values the schema's types do not cover: known backend and dtype, positive sizes, the graphs the
    EarlyTom configuration implies, and the files every backend opens among the artifacts."""
    if manifest.backend not in BACKENDS or manifest.dtype not in GRAPH_DTYPES:
        raise EngineDirError(
            f"backend {manifest.backend!r} / dtype {manifest.dtype!r} is not one of {BACKENDS} / {GRAPH_DTYPES}"
        )
    v = manifest.vision
    sizes = {
        "max_frames": manifest.max_frames,
        **{f"vision.{name}": value for name, value in dataclasses.asdict(v).items() if isinstance(value, int)},
        **{f"vision.{name}[{i}]": n for name in ("frame_size", "unit_shape") for i, n in enumerate(getattr(v, name))},
    }
    least = {"max_frames": 2, "vision.suffix_tokens": 0}
    small = {name: value for name, value in sizes.items() if value < least.get(name, 1)}
    if small:
        raise EngineDirError(
            f"{small} below the smallest valid size (max_frames >= 2, suffix_tokens >= 0, others >= 1)"
        )
    try:
        v.units(manifest.max_frames)
    except ValueError as error:
        raise EngineDirError(f"{MANIFEST}.max_frames: {error}") from None
    config = manifest.config
    try:
        chain = vision_chain(config.variant, config.merge_layers, manifest.vision.encoder_layers)
    except (TypeError, ValueError) as error:
        raise EngineDirError(f"{MANIFEST}.earlytom.merge_layers: {error}") from error
    if manifest.graphs != chain:
        raise EngineDirError(f"{MANIFEST}.graphs are not the vision chain its EarlyTom configuration implies")
    missing = [name for name in REQUIRED if name not in manifest.artifacts]
    if missing:
        raise EngineDirError(f"{MANIFEST}.artifacts lacks {', '.join(missing)}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_on_disk(directory: Path) -> list[str]:
    """Every file under `directory` but the manifest, as sorted relative POSIX paths."""
    files = (p for p in directory.rglob("*") if (p.is_file() or p.is_symlink()) and p.name != MANIFEST)
    return sorted(p.relative_to(directory).as_posix() for p in files)


def write_manifest(directory: Path, **fields) -> Manifest:
    """Write manifest.json with `fields`, the format, the tool versions and the hashes of everything in
    `directory` (so the directory must be complete)."""
    artifacts = {name: sha256(directory / name) for name in files_on_disk(directory)}
    manifest = Manifest(format=FORMAT, tools=tool_versions(), artifacts=artifacts, **fields)
    (directory / MANIFEST).write_text(manifest.to_json())
    return manifest


def load_manifest(directory: Path) -> Manifest:
    """The manifest of `directory`, validated against its schema; nothing else is read."""
    path = Path(directory) / MANIFEST
    if path.is_symlink():
        raise EngineDirError(
            f"{path} is a symbolic link; an engine directory holds its own manifest: rebuild it with build_engine"
        )
    if not path.is_file():
        raise EngineDirError(f"{directory} is not an engine directory (no {MANIFEST}); build one with build_engine")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EngineDirError(f"{path} is corrupt ({error}); rebuild the directory with build_engine") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise EngineDirError(
            f"{directory} has format {found!r}, this earlytom reads {FORMAT!r}; rebuild it with build_engine"
        )
    try:
        return validate(data)
    except EngineDirError as error:
        raise EngineDirError(f"{directory} has an invalid manifest: {error}; rebuild it with build_engine") from error


def validate(data: dict) -> Manifest:
    """The manifest in `data` (parsed JSON), checked against the schema and the values it implies."""
    manifest = parse(Manifest, data, MANIFEST)
    for name in manifest.artifacts:
        check_relative(name, f"{MANIFEST}.artifacts")
    for graph in manifest.graphs:
        check_relative(graph.file, f"{MANIFEST}.graphs")
    try:
        manifest.config  # noqa: B018 - the EarlyTom section must be a valid configuration
    except (TypeError, ValueError) as error:
        raise EngineDirError(f"{MANIFEST}.earlytom is not a valid EarlyTom configuration: {error}") from error
    check_values(manifest)
    return manifest


def verify_files(directory: Path, manifest: Manifest) -> None:
    """The files on disk are exactly the manifest's artifacts, each with its SHA-256."""
    listed, present = set(manifest.artifacts), set(files_on_disk(directory))
    if listed - present:
        raise EngineDirError(
            f"{directory} is incomplete: {', '.join(sorted(listed - present))} missing; rebuild it with build_engine"
        )
    if present - listed:
        raise EngineDirError(
            f"{directory} holds files its manifest does not list ({', '.join(sorted(present - listed))}); "
            "remove them or rebuild the directory with build_engine"
        )
    for graph in manifest.graphs:
        if graph.file not in listed:
            raise EngineDirError(
                f"{directory}: graph {graph.file} is not among the artifacts; rebuild it with build_engine"
            )
    for name, expected in manifest.artifacts.items():
        if (directory / name).is_symlink() or sha256(directory / name) != expected:
            raise EngineDirError(
                f"{directory}/{name} does not match its SHA-256 in {MANIFEST} (modified, corrupt or a link); "
                "rebuild it with build_engine"
            )


def read_manifest(directory: str | Path, *, expect_model: str | None = None) -> Manifest:
    """The verified manifest of `directory`: schema, files and hashes, the model (if `expect_model`) and the
    ONNX Runtime version (not older than the one that verified the graphs)."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    verify_files(directory, manifest)
    built_for = manifest.model.name
    if expect_model is not None and expect_model != built_for:
        raise EngineDirError(
            f"{directory} was built for model {built_for!r}, not {expect_model!r}; drop --model or build "
            f"an engine directory for {expect_model!r}"
        )
    built_with = manifest.tools.get("onnxruntime")
    installed = tool_versions().get("onnxruntime")
    try:
        older = bool(built_with and installed) and Version(installed) < Version(built_with)
    except InvalidVersion as error:
        raise EngineDirError(
            f"{directory}: {MANIFEST}.tools.onnxruntime: {error}; rebuild it with build_engine"
        ) from error
    if older:
        raise EngineDirError(
            f"{directory} was verified with onnxruntime {built_with}; this environment has {installed}. "
            f"Upgrade onnxruntime to >= {built_with} or rebuild the directory here"
        )
    return manifest


def check_compatible(built: TensorRTInfo, *, tensorrt_version: str, gpu_arch: str) -> None:
    """Refuse plans built with another TensorRT version or for another GPU (they are not portable)."""
    if built.tensorrt != tensorrt_version:
        raise IncompatibleEngine(
            f"the engines were built with TensorRT {built.tensorrt}, this machine has {tensorrt_version}; "
            "rebuild them here with build_engine --backend tensorrt"
        )
    if built.gpu_arch != gpu_arch:
        raise IncompatibleEngine(
            f"the engines were built for {built.gpu_arch}, this GPU is {gpu_arch}; rebuild them on this GPU"
        )

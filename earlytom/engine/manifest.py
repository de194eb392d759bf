"""manifest.json of an engine directory: what was built, from what, with which tools, the SHA-256 of every file
and the SHA-256 of the manifest's own canonical form (`manifest_sha256`, so that a hand-edited field is seen).
Reading validates it against the dataclasses below (types, required keys, relative paths), checks its digest,
checks that the files on disk are exactly the listed ones with their hashes (no symbolic link anywhere), and
refuses what does not match; before ONNX Runtime opens a graph, check_external_data refuses external data
outside the listed files.

An engine directory may come from someone else: every path the loader or ONNX Runtime opens is checked to stay
inside it before anything is opened."""

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import onnx
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
    method_chain,
    vision_chain,
)
from earlytom.environment import tool_versions
from earlytom.models.backbone import VisionDims

BACKENDS = ("onnxruntime", "tensorrt")
# Files every engine directory has besides its graphs (what every backend opens).
REQUIRED = (VISUAL_SUFFIX, PREPROCESSOR, f"{DECODER}/config.json", f"{TOKENIZER}/tokenizer_config.json")
DIGEST = "manifest_sha256"  # manifest.json's key holding the SHA-256 of its canonical form (canonical_sha256)
SIGNATURE = "manifest.sig"  # ed25519 signature over manifest.json's bytes (earlytom.engine.signing), optional
MAX_MANIFEST_BYTES = 1 << 24  # a manifest is a few KiB; refuse to read a huge one whole


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
        """manifest.json's text: the fields, then their digest (canonical_sha256)."""
        body = dataclasses.asdict(self)
        return json.dumps(body | {DIGEST: canonical_sha256(body)}, indent=2) + "\n"


def canonical_sha256(body: dict) -> str:
    """SHA-256 of `body` (manifest.json's object without its digest) as compact JSON with sorted keys: the same
    for every spelling of the same JSON (indentation, key order), different after any change of a value."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


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
    if manifest.graphs not in (chain, *method_chains(chain)):
        raise EngineDirError(f"{MANIFEST}.graphs are not the vision chain its EarlyTom configuration implies")
    missing = [name for name in REQUIRED if name not in manifest.artifacts]
    if missing:
        raise EngineDirError(f"{MANIFEST}.artifacts lacks {', '.join(missing)}")


def method_chains(chain: tuple[GraphSpec, ...]) -> tuple[tuple[GraphSpec, ...], ...]:
    """The chains an engine built with the compared methods' outputs may hold (with and without the pooling head's);
    none when its last graph runs no encoder layer."""
    try:
        return tuple(method_chain(chain, has_head) for has_head in (False, True))
    except ValueError:
        return ()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_on_disk(directory: Path) -> list[str]:
    """Every file under `directory` but the manifest and its signature, as sorted relative POSIX paths."""
    files = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(name for name in files if name not in (MANIFEST, SIGNATURE))


def refuse_links(directory: Path) -> None:
    """EngineDirError naming the first symbolic link anywhere under `directory` (file, directory or dangling): an
    engine directory holds its own files, and a link would let the loader read outside it."""
    for root, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            path = Path(root) / name
            if path.is_symlink():
                raise EngineDirError(
                    f"{path} is a symbolic link; an engine directory holds its own files: copy the directory "
                    "without links (cp -rL) or rebuild it with build_engine"
                )


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
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise EngineDirError(
            f"{path} is {path.stat().st_size} bytes, more than a manifest's {MAX_MANIFEST_BYTES}; "
            "rebuild the directory with build_engine"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise EngineDirError(f"{path} is corrupt ({error}); rebuild the directory with build_engine") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise EngineDirError(
            f"{directory} has format {found!r}, this earlytom reads {FORMAT!r}; rebuild it with build_engine"
        )
    body = {key: value for key, value in data.items() if key != DIGEST}
    try:
        manifest = validate(body)
        check_digest(data.get(DIGEST), canonical_sha256(body))
    except EngineDirError as error:
        raise EngineDirError(f"{directory} has an invalid manifest: {error}; rebuild it with build_engine") from error
    return manifest


def check_digest(recorded, computed: str) -> None:
    """The manifest's recorded digest (`recorded`, from the JSON) equals the one of its content (`computed`)."""
    if recorded is None:
        raise EngineDirError(f"{MANIFEST} lacks the key {DIGEST!r}")
    if not isinstance(recorded, str):
        raise EngineDirError(f"{MANIFEST}.{DIGEST} must be str, not {type(recorded).__name__} ({recorded!r})")
    if recorded != computed:
        raise EngineDirError(
            f"{MANIFEST} was edited after it was written (its content's SHA-256 is {computed}, "
            f"{MANIFEST}.{DIGEST} says {recorded})"
        )


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
    """The files on disk are exactly the manifest's artifacts, each with its SHA-256, none a symbolic link."""
    refuse_links(directory)
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
        if sha256(directory / name) != expected:
            raise EngineDirError(
                f"{directory}/{name} does not match its SHA-256 in {MANIFEST} (modified or corrupt); "
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


def external_locations(graph: onnx.ModelProto) -> list[str]:
    """The `location` of every tensor of `graph` (read with load_external_data=False) stored as external data:
    initializers and constant attributes in every subgraph (onnx's own walk), and the top graph's sparse
    initializers."""
    sparse = [t for s in graph.graph.sparse_initializer for t in (s.values, s.indices)]
    return [
        entry.value
        for tensor in [*onnx.external_data_helper._get_all_tensors(graph), *sparse]
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    ]


def check_external_data(directory: Path, manifest: Manifest) -> None:
    """Every external-data location of the manifest's ONNX graphs is a relative path without `..` naming one of
    the manifest's artifacts (hence a verified file inside `directory`), so ONNX Runtime opens nothing else."""
    for graph in manifest.graphs:
        if not graph.file.endswith(".onnx"):
            continue
        try:
            model = onnx.load(directory / graph.file, load_external_data=False)
        except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and friends: any unreadable graph
            raise EngineDirError(
                f"{directory}/{graph.file} is not a readable ONNX graph ({type(error).__name__}: {error}); "
                "rebuild the directory with build_engine"
            ) from None
        parent = PurePosixPath(graph.file).parent
        for location in external_locations(model):
            pure = PurePosixPath(location)
            inside = (parent / pure).as_posix()
            if pure.is_absolute() or ".." in pure.parts or "\\" in location or inside not in manifest.artifacts:
                raise EngineDirError(
                    f"{directory}/{graph.file} keeps tensors in {location!r}, not a file of the engine directory; "
                    "refused (rebuild the directory with build_engine)"
                )


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

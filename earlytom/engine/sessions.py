"""ONNX Runtime sessions over an engine directory's graphs: the execution providers (`Providers`: CPU, CUDA or
TensorRT; CUDA and TensorRT need the `onnxruntime-gpu` package in place of `onnxruntime`, README "GPU") and the
session options. Used by the runtime and by the exporter's verification alike.

The TensorRT execution provider builds its engines on first use with one optimisation profile per graph (frames 1
to the directory's maximum) and caches them OUTSIDE the engine directory, whose files must stay exactly its
manifest's: in `<cache>/<SHA-256 of manifest.json>/`, `<cache>` = `Providers.trt_cache` or
`$XDG_CACHE_HOME/earlytom/trt-ep` (`~/.cache/earlytom/trt-ep`). A rebuilt directory has a new manifest, hence a
new cache.
"""

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from earlytom.engine.layout import MANIFEST
from earlytom.engine.manifest import Manifest, check_external_data, sha256

# --providers value -> ONNX Runtime's providers in priority order (each falls back to the next for the
# operators it does not take).
PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
INSTALL_GPU = (
    "pip uninstall -y onnxruntime && pip install -c constraints.txt onnxruntime-gpu (CUDA 12 and cuDNN 9; "
    "the TensorRT provider also needs TensorRT 10 libraries)"
)


class ProviderUnavailable(ValueError):
    """An execution provider this ONNX Runtime installation does not have or could not load."""


@dataclass(frozen=True)
class Providers:
    """Where an onnxruntime engine directory's graphs run: `kind` cpu | cuda | tensorrt, on GPU `device_id`;
    TensorRT's engine cache under `trt_cache` (None: $XDG_CACHE_HOME/earlytom/trt-ep) and its builder workspace
    `trt_workspace` bytes (None: ONNX Runtime's default)."""

    kind: str = "cpu"
    device_id: int = 0
    trt_cache: Path | None = None
    trt_workspace: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROVIDERS:
            raise ValueError(f"providers = {self.kind!r}; choose one of {', '.join(PROVIDERS)}")
        if isinstance(self.device_id, bool) or not isinstance(self.device_id, int) or self.device_id < 0:
            raise ValueError(f"device_id = {self.device_id!r}: give a GPU index (an integer >= 0)")
        if self.trt_workspace is not None and (not isinstance(self.trt_workspace, int) or self.trt_workspace < 1):
            raise ValueError(f"trt_workspace = {self.trt_workspace!r}: give a size in bytes (an integer >= 1)")
        if self.kind != "tensorrt" and (self.trt_cache is not None or self.trt_workspace is not None):
            raise ValueError(f"the TensorRT cache and workspace apply to providers = 'tensorrt', not {self.kind!r}")


def check_available(kind: str, available: list[str]) -> None:
    """ProviderUnavailable unless every provider `kind` needs is in `available` (ort.get_available_providers())."""
    missing = [name for name in PROVIDERS[kind] if name not in available]
    if missing:
        raise ProviderUnavailable(
            f"providers = {kind!r} needs {', '.join(missing)}, but this ONNX Runtime has {', '.join(available)}; "
            f"install the GPU build: {INSTALL_GPU}"
        )


def check_loaded(kind: str, loaded: list[str]) -> None:
    """ProviderUnavailable if a session fell back from the provider asked for (ONNX Runtime warns and falls
    back when a provider's libraries fail to load)."""
    wanted = PROVIDERS[kind][0]
    if wanted not in loaded:
        raise ProviderUnavailable(
            f"ONNX Runtime could not load {wanted} (the session got {', '.join(loaded)}; its warning above names "
            f"the library it missed); install the CUDA/cuDNN/TensorRT libraries it needs: {INSTALL_GPU}"
        )


def trt_cache_dir(manifest_sha: str, directory: Path, cache: Path | None) -> Path:
    """The TensorRT provider's cache for the engine directory `directory` whose manifest.json has SHA-256
    `manifest_sha`: `<cache>/<manifest_sha>`, never inside `directory` (whose files are exactly its manifest's)."""
    if cache is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "earlytom" / "trt-ep"
    path = Path(cache).expanduser().resolve() / manifest_sha
    if path.is_relative_to(Path(directory).resolve()):
        raise ValueError(
            f"trt_cache = {cache} lies inside the engine directory {directory}, whose files must be exactly its "
            "manifest's; choose a directory outside it"
        )
    return path


def profile_shapes(graph: onnx.ModelProto, max_frames: int) -> dict[str, str]:
    """The TensorRT provider's explicit optimisation profile for `graph`: each input with its symbolic (frame)
    dimensions from 1 to `max_frames` (optimum: max_frames), as `trt_profile_{min,opt,max}_shapes` options."""

    def shapes(frames: int) -> str:
        return ",".join(
            f"{x.name}:" + "x".join(str(d.dim_value) if d.HasField("dim_value") else str(frames) for d in dims)
            for x in graph.graph.input
            for dims in [x.type.tensor_type.shape.dim]
        )

    return {
        "trt_profile_min_shapes": shapes(1),
        "trt_profile_opt_shapes": shapes(max_frames),
        "trt_profile_max_shapes": shapes(max_frames),
    }


def provider_list(
    providers: Providers, *, cache: Path | None = None, fp16: bool = False, profile: dict[str, str] | None = None
) -> list[tuple[str, dict[str, str]]]:
    """ONNX Runtime's `providers` argument (name, options) in priority order. TensorRT takes its engine `cache`
    directory (required), `fp16` (the graphs' precision) and an optimisation `profile` (profile_shapes)."""
    device = {"device_id": str(providers.device_id)}
    options = {"CPUExecutionProvider": {}, "CUDAExecutionProvider": device}
    if providers.kind == "tensorrt":
        if cache is None:
            raise ValueError("the TensorRT provider needs its engine cache directory (trt_cache_dir)")
        trt = {
            **device,
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": str(fp16),
            **({} if profile is None else profile),
        }
        if providers.trt_workspace is not None:
            trt["trt_max_workspace_size"] = str(providers.trt_workspace)
        options["TensorrtExecutionProvider"] = trt
    return [(name, options[name]) for name in PROVIDERS[providers.kind]]


@functools.cache
def shared_cpu_arena() -> None:
    """Register, once per process, the CPU memory arena every ort_session allocates from (session.use_env_allocators)
    with ONNX Runtime's default settings. One arena for all graphs holds the largest working set of any one run;
    the sessions' own arenas held each graph's, summed."""
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg({}))


def ort_session(
    path: Path, threads: int | None = None, providers: list[tuple[str, dict[str, str]]] | None = None
) -> ort.InferenceSession:
    """An ONNX Runtime session on `providers` (provider_list; None: CPU) using `threads` (None: every core) for
    one CPU operator. Its CPU tensors come from the process's one shared arena (shared_cpu_arena): a run reuses the
    memory of the runs before it instead of page-faulting fresh allocations (without an arena a run paid a page
    fault per 4 KiB of every tensor, a quarter of TTFT), and the arena stops growing at the largest request, whatever
    the mix of frame counts after it. Weights stay outside the arena. Memory patterns are off: the planned block
    of each repeated shape is allocated outside the arena, afresh every run. Its threads stop spinning when a run ends
    (within a run they spin between operators, as ONNX Runtime's default has them do): the compression
    between two graphs runs in torch on the same cores, and workers still spinning after a run took them from it
    (FrameMerge took 2-3x as long beside ONNX Runtime as on eager)."""
    shared_cpu_arena()
    options = ort.SessionOptions()
    options.intra_op_num_threads = (os.cpu_count() or 1) if threads is None else threads
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    chosen = provider_list(Providers()) if providers is None else providers
    return ort.InferenceSession(str(path), options, providers=chosen)


def graph_sessions(directory: Path, manifest: Manifest, providers: Providers) -> list[ort.InferenceSession]:
    """One session per vision graph of `directory` on `providers`, refused before any is made if this ONNX
    Runtime lacks them or a graph keeps tensors outside the directory's verified files, and after if one fell back
    to another provider."""
    check_available(providers.kind, ort.get_available_providers())
    check_external_data(directory, manifest)
    cache = None
    if providers.kind == "tensorrt":
        cache = trt_cache_dir(sha256(directory / MANIFEST), directory, providers.trt_cache)
        cache.mkdir(parents=True, exist_ok=True)
    sessions = []
    for graph in manifest.graphs:
        path = directory / graph.file
        profile = None
        if providers.kind == "tensorrt":
            profile = profile_shapes(onnx.load(path, load_external_data=False), manifest.max_frames)
        chosen = provider_list(providers, cache=cache, fp16=manifest.dtype == "fp16", profile=profile)
        session = ort_session(path, providers=chosen)
        check_loaded(providers.kind, session.get_providers())
        sessions.append(session)
    return sessions

"""The ONNX Runtime backend: one session per graph of the engine directory's vision chain (earlytom.engine.sessions:
CPU, CUDA or TensorRT execution providers), compression between them as in the eager backend, and the decoder in
PyTorch (transformers). Between graphs the tensors pass through host memory (compression runs in PyTorch on the
CPU); with a GPU provider the decoder runs on that GPU (decoder_placement).
"""

from collections.abc import Iterable

import torch

from earlytom.dtypes import numpy_dtype, torch_dtype
from earlytom.engine.directory import EngineDir
from earlytom.engine.layout import METHOD_READS
from earlytom.engine.sessions import Providers, graph_sessions
from earlytom.runtime.backends.base import RunOptions, Text, UnsupportedOption, Visual, refuse_changes
from earlytom.runtime.chain import encode_chain
from earlytom.runtime.decoder import decoder_for
from earlytom.runtime.methods import BASELINES, NO_HEAD, has_method_outputs

# The graphs are split at the merge layers: the rest of the EarlyTom parameters may change per run.
FIXED = ("variant", "merge_layers")


def decoder_placement(providers: Providers, graphs_dtype: str) -> tuple[torch.device, torch.dtype, str | None]:
    """Where the PyTorch decoder runs: with the CPU provider on the CPU in float32; with a GPU provider on that
    GPU in the graphs' precision, or, when this PyTorch sees no GPU, on the CPU in float32 with a note saying so."""
    if providers.kind == "cpu":
        return torch.device("cpu"), torch.float32, None
    if not torch.cuda.is_available():
        note = (
            f"the vision graphs run on ONNX Runtime's {providers.kind} provider, but this PyTorch sees no GPU: "
            "the decoder runs on the CPU in float32 (install a CUDA build of torch to run it on the GPU)"
        )
        return torch.device("cpu"), torch.float32, note
    return torch.device("cuda", providers.device_id), torch_dtype(graphs_dtype), None


class OnnxRuntimeBackend:
    name = "onnxruntime"
    video_device = torch.device("cpu")  # the sessions read host arrays, whatever their provider

    def __init__(self, engine: EngineDir, text: Text, providers: Providers | None = None) -> None:
        manifest = engine.manifest
        self.manifest, self.text, self.suffix = manifest, text, engine.suffix
        self.providers = Providers() if providers is None else providers
        self.sessions = graph_sessions(engine.path, manifest, self.providers)
        self.np_dtype = numpy_dtype(manifest.dtype)
        device, dtype, note = decoder_placement(self.providers, manifest.dtype)
        self.lm = engine.load_decoder(dtype).to(device)
        self.side = engine.family.decoder_side(self.lm.config, manifest.vision)
        self.text.notes.extend([note] if note else [])
        self.defaults = RunOptions(config=manifest.config, num_frames=manifest.max_frames)

    def decoder(self, config, method: str = "earlytom"):
        return decoder_for(self.lm, self.side, config, method)

    def check(self, options: RunOptions) -> RunOptions:
        refuse_changes(self.name, self.defaults, options, FIXED, "rebuild the engine directory with build_engine")
        if options.kernels == "aot":
            raise UnsupportedOption(
                "kernels = 'aot' runs the AOT-compiled kernels on the eager CUDA backend (--model M --device cuda "
                "--aot-kernels DIR); the onnxruntime backend's compression runs in PyTorch or Triton: use "
                "--kernels auto, reference or triton"
            )
        self.text.dims.units(options.num_frames)
        if options.method in BASELINES and not has_method_outputs(self.manifest.graphs, options.method):
            if set(METHOD_READS) <= set(self.manifest.graphs[-1].outputs):
                raise UnsupportedOption(NO_HEAD)
            raise UnsupportedOption(
                f"method = {options.method!r}: this engine directory's last graph does not give the last encoder "
                "layer's attention and keys the compared methods read; rebuild it with build_engine "
                "--compared-methods"
            )
        if options.num_frames > self.manifest.max_frames:
            raise UnsupportedOption(
                f"frames = {options.num_frames} exceeds the {self.manifest.max_frames} frames the engines were built "
                f"for; use --frames {self.manifest.max_frames} or fewer, or rebuild with --frames {options.num_frames}"
            )
        return options

    def run(self, index: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Graph `index` on `inputs` (named as in its spec) -> its outputs as float32 tensors."""
        graph = self.manifest.graphs[index]
        feed = {name: x.numpy().astype(self.np_dtype) for name, x in zip(graph.inputs, inputs, strict=True)}
        return tuple(torch.from_numpy(y).float() for y in self.sessions[index].run(list(graph.outputs), feed))

    def chain(self, options: RunOptions) -> tuple[list, tuple, torch.Tensor]:
        """The vision chain (its graphs are fixed at build time): (one session call per graph, the graph specs, the
        suffix [s, D'])."""
        return [lambda *x, i=i: self.run(i, *x) for i in range(len(self.sessions))], self.manifest.graphs, self.suffix

    def encode(self, pixels: Iterable[torch.Tensor], options: RunOptions, timer, trace=None) -> Visual:
        """pixels: chunks [b, *unit_shape] -> Visual, its embeddings on the decoder's device in its dtype."""
        stretches, specs, suffix = self.chain(options)
        visual = encode_chain(stretches, specs, pixels, options, timer, suffix, trace=trace)
        if visual.embeds.device != self.lm.device:
            with timer.stage("to_device"):
                visual.embeds = visual.embeds.to(self.lm.device)
        visual.embeds = visual.embeds.to(self.lm.dtype)
        return visual

"""The ONNX Runtime backend: one session per graph of the engine directory's vision chain (threads = cores),
compression between them as in the eager backend, and the decoder in PyTorch (transformers)."""

import os
from pathlib import Path

import onnxruntime as ort
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from earlytom.engine.layout import DECODER, IMAGE_NEWLINE, numpy_dtype
from earlytom.engine.manifest import Manifest
from earlytom.runtime.backends.base import RunOptions, Text, UnsupportedOption, Visual, refuse_changes
from earlytom.runtime.chain import encode_chain
from earlytom.runtime.decoder import decoder_for

# The graphs are split at the merge layers: the rest of the EarlyTom parameters may change per run.
FIXED = ("variant", "merge_layers")


def ort_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session using `threads` (None: every core) for one operator. The memory arena and
    memory patterns are off: requests come with different frame counts, and a per-shape arena grows a
    long-running process without bound."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = (os.cpu_count() or 1) if threads is None else threads
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, directory: Path, manifest: Manifest, text: Text) -> None:
        self.manifest, self.text = manifest, text
        self.sessions = [ort_session(directory / graph.file) for graph in manifest.graphs]
        self.np_dtype = numpy_dtype(manifest.dtype)
        self.image_newline = load_file(directory / IMAGE_NEWLINE)["image_newline"].float()
        self.lm = AutoModelForCausalLM.from_pretrained(directory / DECODER, dtype=torch.float32).eval()
        self.defaults = RunOptions(config=manifest.config, num_frames=manifest.max_frames)

    def decoder(self, config):
        return decoder_for(self.lm, config)

    def check(self, options: RunOptions) -> RunOptions:
        refuse_changes(self.name, self.defaults, options, FIXED, "rebuild the engine directory with build_engine")
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

    def encode(self, pixels: torch.Tensor, options: RunOptions, timer) -> Visual:
        stretches = [lambda *x, i=i: self.run(i, *x) for i in range(len(self.sessions))]
        return encode_chain(stretches, self.manifest.graphs, pixels, options, timer, self.image_newline)

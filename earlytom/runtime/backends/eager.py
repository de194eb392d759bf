"""The eager backend: the transformers model itself, its encoder run through the model family's backbone as
`Stretch` modules split wherever the run options put the merge layers (nothing is fixed at load time). The oracle
for every other backend.

Device and precision are load-time choices (`load_eager`): the model, the pixels, and every tensor of the
vision chain live on the model's device in its dtype (attention received and merge similarities in float32).
So are AOT-compiled kernels (`aot`, earlytom.plugins.launcher.open_aot_kernels), which `kernels="aot"` runs the
compression on; each run's options are checked against what they were compiled for before anything launches.
"""

from collections.abc import Iterable, Iterator
from dataclasses import replace

import torch

from earlytom.dtypes import torch_dtype
from earlytom.engine.layout import method_chain, vision_chain
from earlytom.engine.stretch import Stretch, stretch_module
from earlytom.models.registry import LoadedModel, load_model
from earlytom.runtime.backends.base import RunOptions, Text, UnsupportedOption, Visual
from earlytom.runtime.chain import encode_chain
from earlytom.runtime.decoder import decoder_for
from earlytom.runtime.methods import BASELINES, NO_HEAD

DEVICES = ("cpu", "cuda")


def eager_device(name: str) -> torch.device:
    """ "cpu", "cuda" or "cuda:N" -> the device, refused when this machine's PyTorch cannot use it."""
    kind, colon, index = name.partition(":")
    if kind not in DEVICES or (colon and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device = {name!r}; choose cpu, cuda or cuda:N (N: a GPU index)")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ValueError(
            f"device = {name!r}, but PyTorch {torch.__version__} ({build}) sees no CUDA GPU; use --device cpu, "
            "or install a CUDA build of torch on a machine with an NVIDIA GPU"
        )
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ValueError(f"device = {name!r}, but this machine has {count} CUDA GPU(s): use cuda:0..cuda:{count - 1}")
    return torch.device(name)


def load_eager(name: str, *, random_init: bool = False, device: str = "cpu", dtype: str = "fp32") -> LoadedModel:
    """`name` loaded (registry.load_model) in `dtype` and moved to `device`; both are checked before loading."""
    where, precision = eager_device(device), torch_dtype(dtype)
    loaded = load_model(name, random_init=random_init, dtype=precision)
    loaded.model.to(where)
    return loaded


class EagerBackend:
    name = "eager"

    def __init__(self, loaded: LoadedModel, defaults: RunOptions, aot=None) -> None:
        """`aot`: the AOT kernels (launcher.AotOps) kernels="aot" runs on (None: refused)."""
        self.aot = aot
        self.loaded = loaded
        self.backbone = loaded.backbone()
        dims = self.backbone.dims
        self.side = loaded.family.decoder_side(loaded.model.config, dims)
        self.text = Text(
            loaded.tokenizer, loaded.chat_template, loaded.family.placeholder, loaded.processor, dims, loaded.notes
        )
        self.lm = loaded.model
        self.defaults = self.check(defaults)

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def video_device(self) -> torch.device:
        return self.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def decoder(self, config, method: str = "earlytom"):
        return decoder_for(self.lm, self.side, config, method)

    def check(self, options: RunOptions) -> RunOptions:
        """`options` with the model-dependent EarlyTom defaults filled in (merge layers), checked against the
        encoder and the frames per unit."""
        config = self.loaded.resolve(options.config)
        vision_chain(config.variant, config.merge_layers, self.text.dims.encoder_layers)
        self.text.dims.units(options.num_frames)
        checked = replace(options, config=config)
        self.check_aot(checked)
        if checked.method in BASELINES:
            self.method_chain(checked)
        return checked

    def method_chain(self, options: RunOptions) -> tuple:
        """The graph specs of a compared method's run, which merges nothing: the encoder split after layer 0, the last
        graph giving the method's inputs (UnsupportedOption when this model cannot give them)."""
        specs = vision_chain("paper", (0,), self.text.dims.encoder_layers)
        if not hasattr(self.backbone, "keys"):
            raise UnsupportedOption(
                f"method = {options.method!r}: the compared methods read the last encoder layer's keys, which this "
                f"model's backbone ({self.text.dims.family}) does not give"
            )
        if options.method == "fastvid" and not self.backbone.has_head:
            raise UnsupportedOption(NO_HEAD)
        try:
            return method_chain(specs, self.backbone.has_head)
        except ValueError as error:
            raise UnsupportedOption(str(error)) from None

    def check_aot(self, options: RunOptions) -> None:
        """UnsupportedOption for kernels="aot" without AOT kernels, or (EarlyTom runs) with kernels compiled for
        other shapes, frame counts or thresholds than `options` need: refused here, before anything launches."""
        if options.kernels != "aot":
            return
        if self.aot is None:
            raise UnsupportedOption(
                "kernels = 'aot' needs the AOT-compiled kernels, given when the model is loaded: "
                "Pipeline.from_pretrained(..., aot_kernels=DIR) or --aot-kernels DIR (an engine directory's "
                "plugins/<arch>/, or python -m earlytom.plugins.aot --arch sm_XX --out DIR)"
            )
        if options.method == "earlytom":  # the other methods launch no kernel
            try:
                self.aot.check_run(self.text.dims, options.config, options.num_frames, self.dtype)
            except ValueError as error:
                raise UnsupportedOption(str(error)) from None

    def chain(self, options: RunOptions) -> tuple[list[Stretch], tuple, torch.Tensor]:
        """The vision chain for `options`: (one Stretch module per graph, the graph specs, the suffix [s, D'])."""
        c = options.config
        specs = vision_chain(c.variant, c.merge_layers, self.text.dims.encoder_layers)
        if options.method in BASELINES:
            specs = self.method_chain(options)
        return [stretch_module(self.backbone, spec) for spec in specs], specs, self.backbone.suffix()

    def encode(self, pixels: Iterable[torch.Tensor], options: RunOptions, timer, trace=None) -> Visual:
        """pixels: chunks [b, *unit_shape] (float32, any device; each copied to the model's device in the timed stage
        "to_device", cast to its dtype by the patch embedding) -> Visual on the model's device."""
        stretches, specs, suffix = self.chain(options)
        aot_ops = None if self.aot is None else self.aot.ops
        chunks = self.on_device(pixels, timer)
        return encode_chain(stretches, specs, chunks, options, timer, suffix, aot_ops, trace=trace)

    def on_device(self, chunks: Iterable[torch.Tensor], timer) -> Iterator[torch.Tensor]:
        for chunk in chunks:
            if chunk.device != self.device:
                with timer.stage("to_device"):
                    chunk = chunk.to(self.device)
            yield chunk

"""What every backend offers the pipeline, and the run options a request is made with.

A backend is opened from a model (eager) or a verified engine directory (onnxruntime, tensorrt) and has:

    name                    "eager" | "onnxruntime" | "tensorrt"
    text                    Text: tokenizer, chat template and its video placeholder, the model's processor and
                            vision dims, notes
    decoder(config, method) the decoder for these EarlyTom parameters (the inner merge's) or, for method "holitom",
                            with HoliTom's in-LLM merge: greedy(before [P],
                            visual: Visual, after [Q], *, max_new_tokens, eos, timer, on_token) -> ids;
                            context_length; inner_counts (None without an inner merge)
    defaults                RunOptions the backend was built or loaded with
    video_device            where decoded frames should land: "cuda" when the vision encoder runs on a GPU (NVDEC
                            decodes there when installed), else "cpu"
    check(options)          -> options, or UnsupportedOption when the backend cannot run them (TensorRT engines
                            fix the method and the EarlyTom parameters at build time, ONNX graphs the merge
                            layers, an engine directory the largest frame count)
    encode(pixels, options, timer, trace=None) -> Visual   pixels: chunks [b, *unit_shape] of encoder units as
                            the video decodes (B units in all); `trace` (optional) receives each merge step and the
                            selection (earlytom.runtime.chain.encode_chain)
"""

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Protocol

import torch

from earlytom.compress import EarlyTomConfig
from earlytom.models.backbone import VisionDims, VisualLayout
from earlytom.video import SAMPLINGS

METHODS = ("earlytom", "full", "global_topk", "fastvid", "holitom", "visionzip")
KERNELS = ("auto", "triton", "aot", "reference")


class UnsupportedOption(ValueError):
    """A run option this backend cannot honour (it was fixed when its engines were built)."""


@dataclass(frozen=True)
class RunOptions:
    """How requests run: the method (EarlyTom, full tokens, post-encoder global top-K at the same retain ratio, or
    one of the compared methods FastVID, HoliTom, VisionZip at that ratio with their released parameters:
    earlytom.runtime.methods), the EarlyTom parameters, frames sampled per video, and the FrameMerge/TokenSelect
    implementation (auto: Triton kernels on CUDA, the PyTorch reference otherwise; aot: the AOT-compiled kernels the
    eager backend was loaded with)."""

    config: EarlyTomConfig = field(default_factory=EarlyTomConfig)
    method: str = "earlytom"
    num_frames: int = 32
    kernels: str = "auto"
    sampling: str = "uniform"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method = {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels = {self.kernels!r}; choose one of {', '.join(KERNELS)}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling = {self.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"frames = {self.num_frames!r}: sample at least 1 frame (an integer >= 1)")

    def flat(self) -> dict:
        """Every option and EarlyTom parameter by name."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "config"}, **self.config.to_dict()}

    def changed(self, other: "RunOptions") -> dict:
        """The options (and EarlyTom parameters) that differ in `other` -> their value here."""
        theirs = other.flat()
        return {name: value for name, value in self.flat().items() if theirs[name] != value}


def refuse_changes(backend: str, defaults: RunOptions, options: RunOptions, fixed: tuple[str, ...], fix: str) -> None:
    """UnsupportedOption if `options` differ from `defaults` in any of `fixed`."""
    built = {name: value for name, value in defaults.changed(options).items() if name in fixed}
    if built:
        raise UnsupportedOption(f"the {backend} backend cannot change {', '.join(built)} (built with {built}); {fix}")


def with_changes(options: RunOptions, *, retain_ratio: float | None = None, **changes) -> RunOptions:
    """`options` with the given non-None changes (a retain ratio goes into the EarlyTom config)."""
    updated = replace(options, **{k: v for k, v in changes.items() if v is not None})
    if retain_ratio is not None:
        updated = replace(updated, config=replace(updated.config, retain_ratio=retain_ratio))
    return updated


@dataclass
class Text:
    """What every backend shares around the encoder: tokenizer, chat template and the video placeholder it
    renders, the model family's processor (frames -> pixel units) and vision dims, and notes for the user (random
    weights, stand-in tokenizer)."""

    tokenizer: object
    chat_template: str
    placeholder: str
    processor: object
    dims: VisionDims
    notes: list[str]


@dataclass
class Visual:
    """The vision side's output for one video of `units` encoder units: embeds [K + s, D'] (selected tokens, then
    the backbone's s suffix embeddings), the (frame, index) of each selected token (frame: unit after the last
    merge), each such unit's first and last source unit, and the unit count after each merge layer."""

    embeds: torch.Tensor
    frame: torch.Tensor
    index: torch.Tensor
    source: torch.Tensor
    units: int
    frames_after: dict[int, int] = field(default_factory=dict)

    def layout(self, seconds_per_unit: float | None = None) -> VisualLayout:
        return VisualLayout(len(self.embeds), self.frame, self.index, self.source, self.units, seconds_per_unit)


class Backend(Protocol):
    name: str
    text: Text
    defaults: RunOptions
    video_device: torch.device

    def decoder(self, config: EarlyTomConfig): ...

    def check(self, options: RunOptions) -> RunOptions: ...

    def encode(self, pixels: Iterable[torch.Tensor], options: RunOptions, timer, trace=None) -> Visual: ...

"""What a model family gives the rest of the package (DESIGN.md section 8): one module per family implements
`Family`, registered by the checkpoint's `model_type` (earlytom.models.registry). Nothing outside
earlytom/models names a family.

    Family       loads the transformers model, tokenizer and chat template; gives its processor, its backbone
                 (the encoder stages) and its decoder side; saves and loads the decoder of an engine directory
    Processor    decoded frames uint8 [b, H, W, 3] (b a multiple of frames_per_unit, H x W = frame_size)
                 -> pixel units [b / frames_per_unit, *unit_shape] float32
    Backbone     the encoder stages over a loaded model:
                     embed(pixels [N, *unit_shape]) -> hidden [N, L, D]
                     run_layers(hidden [N, L, D], start, stop) -> hidden [N, L, D]     layers [start, stop)
                     received(i, hidden [N, L, D] entering layer i) -> attention [N, L] float32
                     project(hidden [N, L, D], scores [N, L]) -> tokens [N, T, D'], scores [N, T]
                     suffix() -> [s, D'] embeddings appended after the selected tokens (s = dims.suffix_tokens)
                 and, for the compared methods (FastVID, HoliTom, VisionZip; a family without them refuses those):
                     keys(i, hidden [N, L, D] entering layer i) -> key states, mean over heads [N, L, d]
                     pool(x [N, L, C]) -> [N, T, C]       the positions project keeps, pooled as it pools them
                     has_head; head(hidden [N, L, D] leaving the last layer) -> attention [N, L], global [N, G]
    DecoderSide  the position ids of a prompt with the kept visual tokens spliced in (1-D or the model's
                 multi-row layout, sequence on the last axis)

The chain's "frames" are the encoder's units: one frame for LLaVA-OneVision, a temporal slice of
`frames_per_unit` frames for models whose patch embedding fuses frames.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class VisionDims:
    """Every size of the vision side the builder, the engine format, the kernels and the runtime read: computed
    once by the family's backbone and stored in the manifest."""

    family: str  # the checkpoint's model_type
    frame_size: tuple[int, ...]  # (height, width) each decoded frame is resized to
    frames_per_unit: int  # frames fused into one encoder unit
    unit_shape: tuple[int, ...]  # one unit's pixels as the first graph takes them
    patch_tokens: int  # L, tokens per unit inside the encoder
    hidden: int  # D
    heads: int  # H, attention heads of the encoder
    encoder_layers: int  # n, layers used
    tokens_per_frame: int  # T, tokens per unit after the projector
    llm_hidden: int  # D'
    suffix_tokens: int  # embeddings appended after the selected tokens

    def units(self, frames: int) -> int:
        """Encoder units for `frames` decoded frames (ValueError unless they fill whole units)."""
        per = self.frames_per_unit
        if frames % per:
            raise ValueError(
                f"frames = {frames}: this model fuses {per} frames into one encoder unit; sample a multiple of {per} "
                f"(e.g. --frames {frames + per - frames % per})"
            )
        return frames // self.frames_per_unit


class Processor(Protocol):
    """A family whose encoder takes more than one frame size also gives `resized(frame_size, *, for_engine)` ->
    the processor at that size (ValueError naming the valid sizes); without it the size is fixed."""

    frame_size: tuple[int, int]
    frames_per_unit: int

    def __call__(self, frames: torch.Tensor) -> torch.Tensor: ...

    def to_dict(self) -> dict: ...


class Backbone(Protocol):
    dims: VisionDims

    def embed(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def run_layers(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor: ...

    def received(self, index: int, hidden: torch.Tensor) -> torch.Tensor: ...

    def project(self, hidden: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def suffix(self) -> torch.Tensor: ...


@dataclass(frozen=True)
class VisualLayout:
    """Where the kept visual tokens came from, for their position ids: `frame` [K] and `index` [K] (unit after the
    last merge, token within it), `source` [N, 2] (first and last original unit of each kept unit), `units` B,
    the seconds between two units (None: the family's default), and `length`, the visual embeddings spliced into the
    prompt (suffix included)."""

    length: int
    frame: torch.Tensor
    index: torch.Tensor
    source: torch.Tensor
    units: int
    seconds_per_unit: float | None = None


class DecoderSide(Protocol):
    def positions(self, before: int, visual: VisualLayout, after: int) -> torch.Tensor | None: ...


@dataclass(frozen=True)
class Family:
    """One model family: `model_type` (the registry key), `aliases` (short name -> Hugging Face id, each with a
    packaged config in earlytom/models/configs/<alias>.json), and what the package asks of it."""

    model_type: str
    model_class: type
    aliases: dict[str, str]
    chat_template: str  # when the checkpoint has none
    placeholder: str  # what the chat template renders for a video: the prompt is split there
    special_tokens: tuple[str, ...]  # of the stand-in byte-level tokenizer (ids 256 ... in this order)
    eos_token: str  # the stand-in tokenizer's end of turn, one of special_tokens
    processor: Callable  # (config, the checkpoint's preprocessor settings dict | None) -> Processor
    processor_from_dict: Callable  # Processor.to_dict() -> Processor
    dims: Callable  # (config, processor) -> VisionDims
    backbone: Callable  # (model, processor) -> Backbone (an nn.Module)
    decoder_side: Callable  # (the decoder's config, the vision dims) -> DecoderSide
    default_merge_layers: Callable  # (variant, config) -> merge layers
    valid_merge_layers: Callable  # (config) -> the layers compression may follow (None: any encoder layer)
    save_decoder: Callable  # (model, directory: Path) -> None: the causal LM an engine directory runs
    load_decoder: Callable  # (directory: Path, dtype) -> that causal LM
    # EarlyTomConfig fields whose default for this family differs from the variant's (applied under the user's)
    default_params: Mapping[str, object] = field(default_factory=dict)

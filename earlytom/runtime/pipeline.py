"""One request end to end: video -> frames -> the vision chain with EarlyTom compression -> prefill with the
visual tokens spliced into the prompt -> greedy decoding. Every stage is timed.

Decoding overlaps the vision encoder: a background thread decodes the sampled frames (at most READ_AHEAD
ahead) while the first vision stretch runs on chunks of CHUNK_FRAMES as they arrive. `ttft` is wall time; the
stages (video_decode included whole) can sum to more.

A `Pipeline` composes a backend (earlytom.runtime.backends: eager, onnxruntime, tensorrt) with the run options
of its requests; `with_options` gives another pipeline over the same loaded backend.
"""

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from earlytom.compress import EarlyTomConfig, visual_budget
from earlytom.models.backbone import VisionDims
from earlytom.models.registry import LoadedModel, family_config
from earlytom.runtime.backends import open_engine_dir
from earlytom.runtime.backends.base import RunOptions, Visual, with_changes
from earlytom.runtime.backends.eager import EagerBackend, eager_device, load_eager
from earlytom.runtime.methods import BASELINES, most_method_tokens, original_positions
from earlytom.runtime.timing import StageTimer
from earlytom.video import VideoError, read_ahead, stack, stream_video

if TYPE_CHECKING:
    from earlytom.engine.sessions import Providers
    from earlytom.plugins.launcher import AotOps
    from earlytom.runtime.stream import VideoStream

PROMPT_SLOT = "\x00prompt\x00"  # stands for the user's text while the chat template is applied
UNTIMED_FPS = 2.0  # the frame rate of arrays and image folders, which carry no timing (DESIGN 8)
CHUNK_FRAMES = 4  # frames per call of the first vision stretch: the encoder starts once this many are decoded
READ_AHEAD = 2 * CHUNK_FRAMES  # frames the decoding thread may hold ahead of the encoder


class PromptTooLong(ValueError):
    """The prompt, the visual tokens and the answer do not fit the decoder's context window."""


@dataclass
class Result:
    text: str
    token_ids: list[int]
    timings_ms: dict[str, float]
    counts: dict[str, int]
    visual: Visual
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"text": self.text, "timings_ms": self.timings_ms, "counts": self.counts, "notes": self.notes}


def most_visual_tokens(options: RunOptions, dims: VisionDims) -> int:
    """Visual tokens (without the suffix) the decoder gets at most for B units of options.num_frames frames: B*T
    with full tokens, K = round(r*B*T) for the paper variant and top-K; the official variant keeps up to
    ceil(T*r_hat) per unit with r_hat = r*B/N, at most r*B*T + N <= r*B*T + B in all."""
    B, T, r = dims.units(options.num_frames), dims.tokens_per_frame, options.config.retain_ratio
    if options.method == "full":
        return B * T
    if options.method in BASELINES:
        return min(B * T, most_method_tokens(options.method, r, B, T))
    if options.method == "earlytom" and options.config.variant == "official":
        return min(B * T, math.ceil(r * B * T) + B)
    return visual_budget(retain_ratio=r, num_frames=B, tokens_per_frame=T, available=B * T)


def sampled_fps(video, timestamps: list[float]) -> float:
    """The rate of the sampled frames, for the time in position ids (DESIGN 8): a video file's sampled frames over
    the seconds between its first and last one; arrays, image folders (no timing of their own) and clips without two
    distinct finite timestamps count as UNTIMED_FPS."""
    if isinstance(video, np.ndarray | torch.Tensor) or Path(video).is_dir():
        return UNTIMED_FPS
    span = timestamps[-1] - timestamps[0] if len(timestamps) > 1 else math.nan
    return (len(timestamps) - 1) / span if math.isfinite(span) and span > 0 else UNTIMED_FPS


def check_clip(frames: int, per_unit: int) -> None:
    """VideoError unless a clip's `frames` sampled frames fill whole encoder units of `per_unit` frames."""
    if frames < per_unit:
        raise VideoError(
            f"the video gives {frames} frame(s); this model fuses {per_unit} frames into one encoder unit: "
            f"give a clip of at least {per_unit} frames"
        )
    if frames % per_unit:
        raise VideoError(
            f"the video gives {frames} frames; this model fuses {per_unit} frames into one encoder unit: "
            f"use --frames {frames - frames % per_unit}"
        )


def pixel_chunks(frames: Iterable[torch.Tensor], processor, timer) -> Iterator[torch.Tensor]:
    """uint8 frames [H, W, 3] as they decode -> pixel units [b, *unit_shape] in chunks of up to CHUNK_FRAMES
    frames (a multiple of the processor's frames per unit), each made by `processor` in the stage "preprocess"."""
    source = iter(frames)
    size = CHUNK_FRAMES * processor.frames_per_unit
    for batch in iter(lambda: list(itertools.islice(source, size)), []):
        with timer.stage("preprocess"):
            pixels = processor(stack(batch))
        yield pixels


class Pipeline:
    """A Video-LLM with EarlyTom compression (`method="earlytom"`), full tokens (`"full"`), the post-encoder
    global top-K baseline (`"global_topk"`), or a compared method (`"fastvid"`, `"holitom"`, `"visionzip"`) at the
    same retain ratio."""

    def __init__(self, backend, options: RunOptions | None = None) -> None:
        self.backend = backend
        self.options = backend.check(backend.defaults if options is None else options)

    @classmethod
    def from_model(
        cls,
        loaded: LoadedModel,
        *,
        config: EarlyTomConfig | dict | None = None,
        method: str = "earlytom",
        num_frames: int = 32,
        kernels: str | None = None,
        sampling: str = "uniform",
        aot: "AotOps | None" = None,
    ) -> "Pipeline":
        """The eager (reference) backend over a loaded model; `aot`: AOT-compiled kernels for it
        (earlytom.plugins.launcher.open_aot_kernels). `kernels` None: "aot" with them, "auto" without. `config`:
        an EarlyTomConfig as it is, or a dict of its fields (None: default) over the model family's defaults
        (Qwen2.5-VL: r = 0.15); None: the family's defaults."""
        if not isinstance(config, EarlyTomConfig):
            config = family_config(loaded.family, {} if config is None else config)
        kernels = ("auto" if aot is None else "aot") if kernels is None else kernels
        options = RunOptions(config=config, method=method, num_frames=num_frames, kernels=kernels, sampling=sampling)
        return cls(EagerBackend(loaded, options, aot))

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        random_init: bool = False,
        device: str = "cpu",
        dtype: str = "fp32",
        aot_kernels: str | Path | None = None,
        **options,
    ) -> "Pipeline":
        """The eager backend for a model name (alias, `tiny`, HF id or local directory) on `device` (cpu, cuda,
        cuda:N) in `dtype` (fp32, fp16, bf16); `aot_kernels`: a directory of AOT-compiled kernels for the GPU
        (an engine directory's plugins/<arch>/, or `python -m earlytom.plugins.aot --out DIR`), opened and checked
        before the model loads, which kernels="aot" (then the default) runs."""
        aot = None
        if aot_kernels is not None:
            from earlytom.plugins.launcher import open_aot_kernels  # imports triton

            aot = open_aot_kernels(Path(aot_kernels), eager_device(device))
        loaded = load_eager(name, random_init=random_init, device=device, dtype=dtype)
        return cls.from_model(loaded, aot=aot, **options)

    @classmethod
    def from_engine_dir(
        cls,
        directory: str | Path,
        *,
        model: str | None = None,
        providers: "Providers | None" = None,
        trusted_key: str | Path | None = None,
        **changes,
    ) -> "Pipeline":
        """The backend an engine directory was built for, after verifying it (refused if tampered, incomplete,
        built for another `model`, or not signed by `trusted_key`, a PEM ed25519 public key file, when given); an
        onnxruntime directory runs on `providers` (None: CPU). Options left None keep the build's (frames: its
        maximum); see with_options."""
        backend = open_engine_dir(directory, model=model, providers=providers, trusted_key=trusted_key)
        return cls(backend, with_changes(backend.defaults, **changes))

    def with_options(
        self,
        *,
        method: str | None = None,
        retain_ratio: float | None = None,
        num_frames: int | None = None,
        kernels: str | None = None,
        sampling: str | None = None,
        config: EarlyTomConfig | None = None,
    ) -> "Pipeline":
        """The same loaded backend with other run options (None: unchanged); an option the backend fixed at
        build time is refused (UnsupportedOption)."""
        changes = {
            "method": method,
            "num_frames": num_frames,
            "kernels": kernels,
            "sampling": sampling,
            "config": config,
        }
        return Pipeline(self.backend, with_changes(self.options, retain_ratio=retain_ratio, **changes))

    @property
    def tokenizer(self):
        return self.backend.text.tokenizer

    @property
    def decoder(self):
        """The decoder for this pipeline's EarlyTom parameters: with its inner merge for method "earlytom", with
        HoliTom's for "holitom", without for the others (they compress nothing inside the model)."""
        config = self.options.config
        if self.options.method != "earlytom":
            config = replace(config, inner_layer=None, inner_ratio=0.0)
        if self.options.method == "holitom":  # HoliTom's own in-LLM merge
            return self.backend.decoder(config, "holitom")
        return self.backend.decoder(config)

    @property
    def config(self) -> EarlyTomConfig:
        return self.options.config

    def prompt_ids(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The chat-formatted prompt as token ids before and after the video: ([P], [Q]). The user's text is
        tokenized as plain text: control tokens typed in it (`<|im_end|>`, `<video>`) stay text."""
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT_SLOT}]}]
        text = self.tokenizer.apply_chat_template(
            conversation, chat_template=self.backend.text.chat_template, tokenize=False, add_generation_prompt=True
        )
        before, after = text.split(self.backend.text.placeholder, 1)
        head, tail = after.split(PROMPT_SLOT, 1)

        def encode(s: str, split: bool = False) -> list[int]:
            return self.tokenizer(s, add_special_tokens=False, split_special_tokens=split).input_ids

        after_ids = encode(head) + encode(prompt, split=True) + encode(tail)
        return torch.tensor(encode(before), dtype=torch.long), torch.tensor(after_ids, dtype=torch.long)

    def check_context(self, text_tokens: int, max_new_tokens: int, limit: int, frames: int | None = None) -> None:
        """PromptTooLong unless the prompt, the most visual tokens of `frames` frames (None: a request's) and the
        answer fit `limit` (the context window)."""
        dims = self.backend.text.dims
        options = self.options if frames is None else replace(self.options, num_frames=frames)
        visual = most_visual_tokens(options, dims) + dims.suffix_tokens
        if text_tokens + visual + max_new_tokens > limit:
            raise PromptTooLong(
                f"the prompt ({text_tokens} tokens) + up to {visual} visual tokens + {max_new_tokens} new tokens "
                f"exceed the decoder's context window of {limit}; use fewer --frames, a lower --retain-ratio, "
                "a shorter prompt or fewer new tokens"
            )

    def open_stream(self, *, max_frames: int | None = None, fps: float | None = None) -> "VideoStream":
        """A stream of frames encoded as they arrive (earlytom.runtime.stream.VideoStream): push(frames) uint8
        [b, H, W, 3], ask(prompt, max_new_tokens) at any time, close(). It keeps the last `max_frames` input frames
        (None: this pipeline's frames per request), whole segments leaving; `fps`, the rate of the frames pushed,
        times the positions of models that encode time (None: the model's default, as for a frame array)."""
        from earlytom.runtime.stream import VideoStream

        return VideoStream(self, max_frames=max_frames, fps=fps)

    def respond(
        self, visual: Visual, before, after, decoder, *, timer, max_new_tokens, on_token, frames_in, seconds_per_unit
    ) -> Result:
        """The decoder's greedy answer to the prompt ids `before` [P] + `visual` + `after` [Q] -> Result (the tail
        of a request; an open stream's ask). seconds_per_unit: between two encoder units (None: the default)."""
        eos = self.tokenizer.eos_token_id
        layout = visual.layout(seconds_per_unit)
        if self.options.method == "fastvid":  # kept tokens keep their places in the full prompt (RoPE gaps)
            T = self.backend.text.dims.tokens_per_frame
            positions = original_positions(len(before), layout, len(after), T).to(decoder.lm.device)
        else:
            positions = decoder.positions(len(before), layout, len(after))
        generated = decoder.greedy(
            before,
            visual.embeds,
            after,
            max_new_tokens=max_new_tokens,
            eos=eos,
            timer=timer,
            on_token=on_token,
            positions=positions,
        )
        answer = generated[:-1] if generated[-1] == eos else generated
        counts = {
            "frames_in": frames_in,
            **{f"frames_after_layer_{layer}": n for layer, n in visual.frames_after.items()},
            "frames_after_merge": int(visual.source.shape[0]),
            "visual_tokens": len(visual.frame),
            **(decoder.inner_counts or {}),
        }
        return Result(
            text=self.tokenizer.decode(answer, skip_special_tokens=True),
            token_ids=generated,
            timings_ms=timer.breakdown(),
            counts=counts,
            visual=visual,
            notes=list(self.backend.text.notes),
        )

    @torch.inference_mode()
    def generate(self, video, prompt: str, max_new_tokens: int = 32, *, on_token=None) -> Result:
        """Answer `prompt` about `video` (a path, an image directory or a uint8 array [B, H, W, 3]) with up to
        `max_new_tokens` (>= 1) tokens. `on_token` (a callable, optional) receives each generated token id as
        soon as it exists."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens = {max_new_tokens!r}: generate at least 1 token (an integer >= 1)")
        timer = StageTimer()
        before, after = self.prompt_ids(prompt)
        decoder = self.decoder
        self.check_context(len(before) + len(after), max_new_tokens, decoder.context_length)
        processor = self.backend.text.processor
        with timer.stage("video_decode"):  # planning: open the file, find the frames (or keyframes) to decode
            stream = stream_video(
                video,
                self.options.num_frames,
                size=processor.frame_size,
                sampling=self.options.sampling,
                device=self.backend.video_device,  # a GPU encoder: NVDEC when installed
            )
        check_clip(len(stream), processor.frames_per_unit)
        frames = read_ahead(timer.timed(stream, "video_decode"), READ_AHEAD)  # decodes in a background thread
        try:
            visual = self.backend.encode(pixel_chunks(frames, processor, timer), self.options, timer)
        finally:
            frames.close()  # stops the decoding thread and closes the file if the encoder stopped early
        seconds_per_unit = self.backend.text.dims.frames_per_unit / sampled_fps(video, stream.timestamps)
        result = self.respond(
            visual,
            before,
            after,
            decoder,
            timer=timer,
            max_new_tokens=max_new_tokens,
            on_token=on_token,
            frames_in=len(stream),
            seconds_per_unit=seconds_per_unit,
        )
        result.notes += stream.notes
        return result

"""One request end to end: video -> frames -> vision head -> FrameMerge -> vision tail -> TokenSelect ->
prefill with the visual tokens spliced into the prompt -> greedy decoding. Every stage is timed.

The vision side and the decoder are objects with these methods, so backends can swap either:
    vision:  encode_head(pixels [B,3,H,W]) -> [B,L,D];  encode_tail(hidden [N,L,D]) -> ([N,T,D'], [N,T]);
             image_newline [D']
    decoder: greedy(before [P], visual [K+1, D'], after [Q], max_new_tokens, eos, timer) -> token ids
             (timing the "prefill" and "first_token" stages);  context_length
"""

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from earlytom import compress
from earlytom.compress import EarlyTomConfig, MergeResult, SelectResult, global_topk, uniform, visual_budget
from earlytom.engine_builder.manifest import EngineDirError, missing_gpu_stack, read_manifest
from earlytom.models.llava_onevision import LlavaOnevisionAdapter
from earlytom.models.registry import LoadedModel, Preprocess, load_model
from earlytom.runtime.decoder import Decoder
from earlytom.runtime.onnx_backend import OnnxVision
from earlytom.runtime.timing import StageTimer
from earlytom.runtime.video import load_video, preprocess

METHODS = ("earlytom", "full", "global_topk")
KERNELS = ("auto", "triton", "reference")


class PromptTooLong(ValueError):
    """The prompt, the visual tokens and the answer do not fit the decoder's context window."""


@dataclass
class Visual:
    """The vision side's output for one video: embeds [K+1, D'] (selected tokens, then image_newline), the
    (frame, index) of each selected token, and each frame after merging's first and last source frame."""

    embeds: torch.Tensor
    frame: torch.Tensor
    index: torch.Tensor
    source: torch.Tensor


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


class Pipeline:
    """A Video-LLM with EarlyTom compression (`method="earlytom"`), full tokens (`"full"`), or the post-encoder
    global top-K baseline (`"global_topk"`, VisionZip-like) at the same retain ratio."""

    def __init__(
        self,
        vision,
        decoder,
        *,
        tokenizer,
        chat_template: str,
        preprocess: Preprocess,
        config: EarlyTomConfig,
        tokens_per_frame: int,
        num_frames: int = 32,
        method: str = "earlytom",
        kernels: str = "auto",
        notes: list[str] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method = {method!r}; choose one of {', '.join(METHODS)}")
        if kernels not in KERNELS:
            raise ValueError(f"kernels = {kernels!r}; choose one of {', '.join(KERNELS)}")
        if num_frames < 1:
            raise ValueError(f"frames = {num_frames}: sample at least 1 frame")
        self.vision, self.decoder = vision, decoder
        self.tokenizer, self.chat_template, self.preprocess = tokenizer, chat_template, preprocess
        self.config, self.tokens_per_frame = config, tokens_per_frame
        self.num_frames, self.method, self.kernels = num_frames, method, kernels
        self.notes = list(notes or [])

    @classmethod
    def from_model(
        cls, loaded: LoadedModel, *, merge_layer: int | None = None, config: EarlyTomConfig | None = None, **kw
    ) -> "Pipeline":
        adapter = LlavaOnevisionAdapter(loaded.model, merge_layer)
        return cls(
            adapter,
            Decoder(loaded.model),
            tokenizer=loaded.tokenizer,
            chat_template=loaded.chat_template,
            preprocess=loaded.preprocess,
            config=config or EarlyTomConfig(),
            tokens_per_frame=adapter.tokens_per_frame,
            notes=loaded.notes,
            **kw,
        )

    @classmethod
    def from_pretrained(cls, name: str, *, random_init: bool = False, **kw) -> "Pipeline":
        """The eager (reference) backend for a model name (alias, `tiny`, HF id or local directory)."""
        return cls.from_model(load_model(name, random_init=random_init), **kw)

    @classmethod
    def from_engine_dir(
        cls,
        directory: str | Path,
        *,
        model: str | None = None,
        retain_ratio: float | None = None,
        num_frames: int | None = None,
        method: str = "earlytom",
    ) -> "Pipeline":
        """The backend an engine directory was built for, after verifying its manifest (refused if tampered,
        incomplete, or built for another `model`). Frames default to, and may not exceed, the build's maximum;
        the retain ratio defaults to the build's."""
        directory = Path(directory)
        manifest = read_manifest(directory, expect_model=model)
        built = manifest["earlytom"]
        num_frames = num_frames or built["max_frames"]
        if num_frames > built["max_frames"]:
            raise ValueError(
                f"frames = {num_frames} exceeds the {built['max_frames']} frames {directory} was built for; "
                f"use --frames {built['max_frames']} or fewer, or rebuild with build_engine --frames {num_frames}"
            )
        fields = {k: built[k] for k in ("alpha", "tau_seg", "tau_merge", "retain_ratio")}
        config = EarlyTomConfig(**fields | ({"retain_ratio": retain_ratio} if retain_ratio else {}))
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        common = {
            "tokenizer": tokenizer,
            "chat_template": tokenizer.chat_template,
            "preprocess": Preprocess.load(directory / "preprocessor.json"),
            "config": config,
            "tokens_per_frame": built["tokens_per_frame"],
            "num_frames": num_frames,
            "method": method,
            "notes": manifest["notes"],
        }
        if manifest["backend"] == "tensorrt":
            missing = missing_gpu_stack()
            if missing:
                raise EngineDirError(
                    f"{directory} holds TensorRT engines, which need {', '.join(missing)}; run it on the GPU "
                    "machine it was built for, or build an onnxruntime directory for this one"
                )
            from earlytom.runtime.tensorrt_backend import TensorRTPipeline  # pragma: no cover - GPU only

            if config.retain_ratio != built["retain_ratio"] or method != "earlytom":
                raise ValueError(
                    f"the TensorRT engines in {directory} select K for retain_ratio = {built['retain_ratio']} with "
                    "EarlyTom; rebuild with build_engine --retain-ratio to change it"
                )
            return TensorRTPipeline.open(directory, manifest, **common)
        decoder = AutoModelForCausalLM.from_pretrained(directory / "decoder", dtype=torch.float32).eval()
        return cls(OnnxVision(directory, manifest["dtype"]), Decoder(decoder), **common)

    def with_options(self, *, method: str | None = None, retain_ratio: float | None = None) -> "Pipeline":
        """The same loaded models with another method or retain ratio (nothing is reloaded)."""
        config = replace(self.config, retain_ratio=retain_ratio) if retain_ratio else self.config
        return type(self)(
            self.vision,
            self.decoder,
            tokenizer=self.tokenizer,
            chat_template=self.chat_template,
            preprocess=self.preprocess,
            config=config,
            tokens_per_frame=self.tokens_per_frame,
            num_frames=self.num_frames,
            method=method or self.method,
            kernels=self.kernels,
            notes=self.notes,
        )

    def prompt_ids(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The chat-formatted prompt as token ids before and after the video placeholder: ([P], [Q])."""
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        text = self.tokenizer.apply_chat_template(
            conversation, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )
        before, after = text.split("<video>", 1)
        encode = lambda s: torch.tensor(self.tokenizer(s, add_special_tokens=False).input_ids, dtype=torch.long)  # noqa: E731
        return encode(before), encode(after)

    def max_visual_tokens(self, num_frames: int) -> int:
        """Visual tokens (with the newline) the decoder will get at most for `num_frames` frames."""
        T = self.tokens_per_frame
        if self.method == "full":
            return num_frames * T + 1
        k = visual_budget(
            retain_ratio=self.config.retain_ratio, num_frames=num_frames, tokens_per_frame=T, available=num_frames * T
        )
        return k + 1

    def check_context(self, text_tokens: int, num_frames: int, max_new_tokens: int) -> None:
        visual = self.max_visual_tokens(num_frames)
        limit = self.decoder.context_length
        if text_tokens + visual + max_new_tokens > limit:
            raise PromptTooLong(
                f"the prompt ({text_tokens} tokens) + up to {visual} visual tokens + {max_new_tokens} new tokens "
                f"exceed the decoder's context window of {limit}; use fewer --frames, a lower --retain-ratio, "
                "a shorter prompt or fewer new tokens"
            )

    def ops(self, device: torch.device):
        """The FrameMerge / TokenSelect implementation: the Triton kernels on CUDA (or when forced), the PyTorch
        reference otherwise. Triton is imported only then: its interpreter mode is read at import."""
        use_triton = self.kernels == "triton" or (self.kernels == "auto" and device.type == "cuda")
        if not use_triton:
            return compress
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "kernels = 'triton' needs a CUDA device, or TRITON_INTERPRET=1 in the environment to interpret "
                "the kernels on CPU; use kernels = 'reference' (or 'auto') here"
            )
        from earlytom.plugins.triton import ops

        return ops

    def merge(self, hidden: torch.Tensor) -> MergeResult:
        """hidden [B, L, D] -> FrameMerge with this pipeline's config."""
        c = self.config
        return self.ops(hidden.device).frame_merge(hidden, alpha=c.alpha, tau_seg=c.tau_seg, tau_merge=c.tau_merge)

    def select(self, tokens: torch.Tensor, scores: torch.Tensor, is_static, *, num_frames: int) -> SelectResult:
        """tokens [N, T, D'], scores [N, T] -> the tokens `self.method` keeps (all of them for "full")."""
        r = self.config.retain_ratio
        if self.method == "earlytom":
            ops = self.ops(tokens.device)
            return ops.token_select(tokens, scores, is_static, retain_ratio=r, num_frames=num_frames)
        if self.method == "global_topk":
            return global_topk(tokens, scores, retain_ratio=r, num_frames=num_frames)
        return uniform(tokens, retain_ratio=1.0, num_frames=tokens.shape[0])  # every token, in order

    def encode_video(self, pixels: torch.Tensor, timer: StageTimer) -> Visual:
        """pixels [B, 3, H, W] -> the visual tokens for the decoder, by `self.method`."""
        B = pixels.shape[0]
        with timer.stage("vision_head"):
            hidden = self.vision.encode_head(pixels)  # [B, L, D]
        source = torch.arange(B)[:, None].expand(B, 2)
        is_static = None
        if self.method == "earlytom":
            with timer.stage("frame_merge"):
                merged = self.merge(hidden)
                hidden, source, is_static = merged.hidden, merged.source, merged.is_static
        with timer.stage("vision_tail"):
            tokens, scores = self.vision.encode_tail(hidden)  # [N, T, D'], [N, T]
        with timer.stage("token_select"):
            picked = self.select(tokens, scores, is_static, num_frames=B)
            embeds = torch.cat([picked.tokens, self.vision.image_newline[None].to(picked.tokens.dtype)])
        return Visual(embeds=embeds, frame=picked.frame, index=picked.index, source=source)

    @torch.inference_mode()
    def generate(self, video, prompt: str, max_new_tokens: int = 32, *, on_token=None) -> Result:
        """Answer `prompt` about `video` (a path, an image directory or a uint8 array [B, H, W, 3]). `on_token`
        (a callable, optional) receives each generated token id as soon as it exists."""
        timer = StageTimer()
        before, after = self.prompt_ids(prompt)
        self.check_context(len(before) + len(after), self.num_frames, max_new_tokens)
        with timer.stage("video_decode"):
            clip = load_video(video, self.num_frames)
        with timer.stage("preprocess"):
            pixels = preprocess(clip.frames, self.preprocess)  # [B, 3, S, S]
        visual = self.encode_video(pixels, timer)
        eos = self.tokenizer.eos_token_id
        generated = self.decoder.greedy(
            before, visual.embeds, after, max_new_tokens=max_new_tokens, eos=eos, timer=timer, on_token=on_token
        )
        answer = generated[:-1] if generated[-1] == eos else generated
        counts = {
            "frames_in": int(pixels.shape[0]),
            "frames_after_merge": int(visual.source.shape[0]),
            "visual_tokens": int(visual.embeds.shape[0] - 1),
        }
        return Result(
            text=self.tokenizer.decode(answer, skip_special_tokens=True),
            token_ids=generated,
            timings_ms=timer.breakdown(),
            counts=counts,
            visual=visual,
            notes=self.notes + clip.notes,
        )

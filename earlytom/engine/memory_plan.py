"""Will the engine fit the GPU? A memory plan from the configs alone: no weights loaded, nothing downloaded.

    memory_sizes(config, vision) -> MemorySizes          parameters (meta device) + decoder and vision shapes
    plan_memory(sizes, frames, target, ...) -> MemoryPlan the rows below, a verdict, and the fixes if it fails
    model_sizes(config, dims) -> MemorySizes             the same from a backbone's VisionDims
    plan.table() / plan.to_dict() / check_fits(plan)      text, JSON-able dict, DoesNotFit (a ValueError)
    check_free_memory(plan.to_dict(), free, total, dev)   at load: DoesNotFit unless the GPU has the memory free

Rows (bytes; b = 2 for every precision but fp32, where b = 4):

- weights. Parameters are counted on transformers' own model, instantiated on the `meta` device from the
  config (any family: AutoModelForImageTextToText, else AutoModelForCausalLM). The decoder is
  `model.get_decoder()` plus the output embedding; everything else (vision tower, projector, extra
  embeddings such as an image newline) is "vision" and is stored at b. Decoder precisions:
  fp32 4 bytes, fp16 / bf16 2 bytes per parameter; fp8 (ModelOpt FP8): the weights of the decoder's
  nn.Linear layers 1 byte plus two fp32 per-tensor scales (weight, activation) per layer, the rest 2 bytes;
  int4_awq: those weights 4 bits plus an fp16 scale and an fp16 zero point per group of 128 input channels
  (an upper bound over AutoAWQ's packed 4-bit zeros and TensorRT-LLM's scale-only W4A16), the rest
  (embeddings, lm_head, norms, biases) 2 bytes. Unused vision layers (a `vision_feature_layer` short of the
  last) are counted too.
- vision activations for F frames, one encoder layer's working set (TensorRT reuses activation memory
  across the layers of an engine), all live at once: the hidden states entering and leaving the layer
  2*F*L*D*b, the attention scores of the received-attention pass F*H*L*L*4 (fp32 softmax), the MLP
  intermediate F*L*I*b. Before the first merge F = B and the pixels F*3*S*S*b are added; after it N <= B
  frames, planned at the worst case N = B (no pair merged, e.g. a scene cut every other frame: the
  engine's profiles also go up to B), and the projector F*L*D'*2*b and pooled tokens F*T*D'*b are added.
  The stages run one after the other: only the larger row is counted (the execution contexts share one
  block of activation memory).
- KV cache for the longest context: 2 * layers * kv_heads * head_dim * tokens * b (batch 1, beam 1, KV in
  the decoder's activation width: no FP8 KV cache), from `config.get_text_config()`.
- decoder activations: a prefill of the whole context at once (max_num_tokens >= the context), per token
  the residual, norm output and attention output 3*D', q/k/v (heads + 2*kv_heads)*head_dim, the MLP's
  gate, up and their product 3*I', at b; fused attention (no [tokens, tokens] scores); plus the last
  token's logits in fp32, vocab*4.
- fixed: the CUDA context 0.5 GiB, TensorRT / TensorRT-LLM runtime workspace (cuBLAS, plugins) 1 GiB, and
  a margin of 5% of everything else for allocator fragmentation.

The default context is every visual token of every frame (F*T + 1 for the image newline) + 512 prompt
tokens + 512 new tokens (no compression: an upper bound for any retain ratio), at most the decoder's
max_position_embeddings. Targets are nominal capacities; a device reports somewhat less (ECC, driver),
which the GPU backends check against free memory at load.
"""

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, PretrainedConfig

from earlytom.models.backbone import VisionDims

GIB = 1 << 30
PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int4_awq")
QUANTIZED = ("fp8", "int4_awq")  # in the order a fix tries them: the closer to fp16 first
GPUS_GIB = {"rtx4090": 24, "l4": 24, "a10": 24, "a100-40g": 40, "a100-80g": 80, "h100": 80}
NO_FP8 = ("a10", "a100-40g", "a100-80g")  # Ampere (sm_80, sm_86): TensorRT-LLM's FP8 needs Ada or Hopper (sm_89+)
AWQ_GROUP = 128
CUDA_CONTEXT = GIB // 2
RUNTIME_WORKSPACE = GIB
FRAGMENTATION = 0.05
PROMPT_TOKENS = 512
NEW_TOKENS = 512
MIN_FRAMES = 2  # what build_engine accepts


class DoesNotFit(ValueError):
    """A plan whose total exceeds the target GPU; the message names the options that would fit."""


@dataclass(frozen=True)
class VisionShape:
    """The vision side's dims (the names of earlytom.models.backbone.VisionDims where they exist)."""

    unit_pixels: int  # elements of one frame's (encoder unit's) pixels, e.g. 3 x S x S
    patch_tokens: int  # L, tokens per frame inside the encoder
    hidden: int  # D, encoder width
    heads: int  # H, encoder attention heads
    mlp_hidden: int  # I, the encoder MLP's intermediate width
    tokens_per_frame: int  # T, LLM tokens per frame after projector and pooling
    llm_hidden: int  # D', the projector's output width

    @classmethod
    def of(cls, dims: VisionDims, *, mlp_hidden: int) -> "VisionShape":
        """The shape of a backbone's `dims` with its encoder's MLP width."""
        unit_pixels = math.prod(dims.unit_shape)
        fields = (dims.patch_tokens, dims.hidden, dims.heads, mlp_hidden, dims.tokens_per_frame, dims.llm_hidden)
        return cls(unit_pixels, *fields)


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int  # D'
    intermediate: int  # I'
    vocab: int
    max_positions: int

    @classmethod
    def from_config(cls, text: PretrainedConfig) -> "DecoderShape":
        heads = text.num_attention_heads
        return cls(
            layers=text.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            hidden=text.hidden_size,
            intermediate=text.intermediate_size,
            vocab=text.vocab_size,
            max_positions=text.max_position_embeddings,
        )


@dataclass(frozen=True)
class ParameterCounts:
    """A model's parameters by how the decoder precisions store them (shared tensors counted once)."""

    vision: int  # everything outside the decoder and its output embedding
    decoder_linear: int  # weights of the decoder's nn.Linear layers: what fp8 and int4_awq quantize
    decoder_linear_layers: int  # how many (one fp8 weight and activation scale each)
    decoder_linear_groups: int  # sum over them of out_features * ceil(in_features / 128): int4_awq groups
    decoder_other: int  # embeddings, output embedding (lm_head), norms, biases

    @property
    def decoder(self) -> int:
        return self.decoder_linear + self.decoder_other


@dataclass(frozen=True)
class MemorySizes:
    """What a plan needs from a model: its parameter counts and shapes."""

    params: ParameterCounts
    decoder: DecoderShape
    vision: VisionShape


@dataclass(frozen=True)
class Row:
    name: str
    bytes: int
    counted: bool = True


@dataclass(frozen=True)
class Fixes:
    """Each alone makes the plan fit (None: that change cannot)."""

    frames: int | None  # the largest frame count that fits
    max_context: int | None  # the largest context that fits at the planned frames
    decoder_precision: str | None  # the first of QUANTIZED, cheaper than the planned precision, that fits
    gpu: str | None  # the smallest listed GPU that holds the plan as it is


@dataclass(frozen=True)
class MemoryPlan:
    model: str
    frames: int
    max_context: int
    decoder_precision: str
    target: str
    capacity: int  # bytes
    rows: tuple[Row, ...]
    decoder_weights: dict[str, int]  # bytes per precision, for comparison
    fixes: Fixes | None = None  # only for a plan that does not fit

    @property
    def total(self) -> int:
        return sum(row.bytes for row in self.rows if row.counted)

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    def to_dict(self) -> dict:
        """JSON-able: the settings, every row in bytes, the total, the verdict and the fixes."""
        return {
            "model": self.model,
            "frames": self.frames,
            "max_context": self.max_context,
            "decoder_precision": self.decoder_precision,
            "target": self.target,
            "capacity_bytes": self.capacity,
            "rows": [asdict(row) for row in self.rows],
            "total_bytes": self.total,
            "fits": self.fits,
            "decoder_weights_bytes": self.decoder_weights,
            "fixes": None if self.fixes is None else asdict(self.fixes),
        }

    def table(self) -> str:
        width = max(len(row.name) for row in self.rows)
        lines = [
            f"memory plan: {self.model}, {self.frames} frames, decoder {self.decoder_precision}, "
            f"max context {self.max_context} tokens, target {self.target} ({gib(self.capacity)} GiB)"
        ]
        for row in self.rows:
            note = "" if row.counted else "  (not counted: the stages run in turn in one block)"
            lines.append(f"  {row.name:<{width}}  {gib(row.bytes):>8} GiB{note}")
        lines.append(f"  {'total':<{width}}  {gib(self.total):>8} GiB")
        others = ", ".join(f"{p} {gib(b)}" for p, b in self.decoder_weights.items() if p != self.decoder_precision)
        lines.append(f"decoder weights at other precisions (GiB): {others}")
        lines.append(self.verdict())
        return "\n".join(lines)

    def verdict(self) -> str:
        room = self.capacity - self.total
        if room >= 0:
            return f"fits on {self.target}: {gib(room)} GiB to spare"
        text = f"does NOT fit on {self.target}: {gib(-room)} GiB short"
        if self.fixes is None:
            return text
        options = fix_text(self.fixes)
        return f"{text}; it fits with {options}" if options else f"{text}; no single change makes it fit"


def gib(size: int) -> str:
    return f"{size / GIB:.2f}"


def fix_text(fixes: Fixes) -> str:
    """The fixes as command-line options, alternatives joined by 'or'."""
    options = []
    if fixes.frames is not None:
        options.append(f"--frames {fixes.frames}")
    if fixes.max_context is not None:
        options.append(f"--max-context {fixes.max_context}")
    if fixes.decoder_precision is not None:
        options.append(f"--decoder-precision {fixes.decoder_precision}")
    if fixes.gpu is not None:
        options.append(f"--target-gpu {fixes.gpu} ({GPUS_GIB[fixes.gpu]} GiB)")
    return " or ".join(options)


def parse_target(target: str) -> tuple[str, int]:
    """'rtx4090' | 'l4' | ... | '<N>GiB' (any case) -> (name, capacity in bytes)."""
    if target.lower() in GPUS_GIB:
        return target.lower(), GPUS_GIB[target.lower()] * GIB
    if target.lower().endswith("gib"):
        try:
            size = float(target[:-3])
        except ValueError:
            size = math.nan
        if size > 0 and math.isfinite(size):
            return target, int(size * GIB)
    raise ValueError(
        f"target GPU {target!r} is unknown: use one of {', '.join(GPUS_GIB)} or a memory size such as 16GiB"
    )


def meta_model(config: PretrainedConfig) -> nn.Module:
    """transformers' model for `config`, on the meta device (shapes only: no memory, no weights)."""
    with torch.device("meta"):
        for auto in (AutoModelForImageTextToText, AutoModelForCausalLM):
            try:
                return auto.from_config(config)
            except ValueError:  # the config class has no model of this kind
                continue
    raise ValueError(f"no transformers model for a {type(config).__name__}: give a vision-language or causal LM")


def count_parameters(config: PretrainedConfig) -> ParameterCounts:
    """The parameters of `config`'s model by storage class (see the module docstring)."""
    model = meta_model(config)
    decoder = model.get_decoder()
    decoder_ids = {id(p) for p in decoder.parameters()} | {id(p) for p in model.get_output_embeddings().parameters()}
    linears = [m for m in decoder.modules() if isinstance(m, nn.Linear)]
    linear = sum(m.weight.numel() for m in linears)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once
    decoder_total = sum(p.numel() for p in model.parameters() if id(p) in decoder_ids)
    return ParameterCounts(
        vision=total - decoder_total,
        decoder_linear=linear,
        decoder_linear_layers=len(linears),
        decoder_linear_groups=sum(m.out_features * math.ceil(m.in_features / AWQ_GROUP) for m in linears),
        decoder_other=decoder_total - linear,
    )


def memory_sizes(config: PretrainedConfig, vision: VisionShape) -> MemorySizes:
    return MemorySizes(count_parameters(config), DecoderShape.from_config(config.get_text_config()), vision)


def model_sizes(config: PretrainedConfig, dims: VisionDims) -> MemorySizes:
    """The sizes of a vision-language model from its config and its backbone's dims (the encoder's MLP width from
    config.vision_config)."""
    return memory_sizes(config, VisionShape.of(dims, mlp_hidden=config.vision_config.intermediate_size))


def width(precision: str) -> int:
    """b: bytes of an activation, a KV entry, an unquantized weight."""
    return 4 if precision == "fp32" else 2


def decoder_weight_bytes(params: ParameterCounts, precision: str) -> int:
    if precision == "fp8":
        return params.decoder_linear + 8 * params.decoder_linear_layers + 2 * params.decoder_other
    if precision == "int4_awq":
        return math.ceil(params.decoder_linear / 2) + 4 * params.decoder_linear_groups + 2 * params.decoder_other
    return width(precision) * params.decoder


def layer_working_set(vision: VisionShape, frames: int, b: int) -> int:
    """One encoder layer at `frames` frames: hidden in and out [F, L, D], fp32 scores [F, H, L, L], MLP [F, L, I]."""
    L = vision.patch_tokens
    return frames * (2 * L * vision.hidden * b + vision.heads * L * L * 4 + L * vision.mlp_hidden * b)


def vision_before_merge(vision: VisionShape, frames: int, b: int) -> int:
    return layer_working_set(vision, frames, b) + frames * vision.unit_pixels * b


def vision_after_merge(vision: VisionShape, frames: int, b: int) -> int:
    projector = frames * (2 * vision.patch_tokens + vision.tokens_per_frame) * vision.llm_hidden * b
    return layer_working_set(vision, frames, b) + projector


def kv_cache_bytes(decoder: DecoderShape, tokens: int, b: int) -> int:
    return 2 * decoder.layers * decoder.kv_heads * decoder.head_dim * tokens * b


def decoder_activation_bytes(decoder: DecoderShape, tokens: int, b: int) -> int:
    qkv = (decoder.heads + 2 * decoder.kv_heads) * decoder.head_dim
    per_token = 3 * decoder.hidden + qkv + 3 * decoder.intermediate
    return tokens * per_token * b + decoder.vocab * 4


def default_max_context(sizes: MemorySizes, frames: int) -> int:
    visual = frames * sizes.vision.tokens_per_frame + 1
    return min(visual + PROMPT_TOKENS + NEW_TOKENS, sizes.decoder.max_positions)


def check_settings(sizes: MemorySizes, frames: int, max_context: int | None, precision: str, target: str) -> None:
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < MIN_FRAMES:
        raise ValueError(f"frames = {frames!r}: plan at least {MIN_FRAMES} frames (an integer), e.g. --frames 32")
    if precision not in PRECISIONS:
        raise ValueError(f"decoder precision {precision!r} is unknown: use one of {', '.join(PRECISIONS)}")
    if precision == "fp8" and target in NO_FP8:
        raise ValueError(f"decoder precision fp8 needs an Ada or Hopper GPU (sm_89+); {target} has none: use int4_awq")
    if max_context is None:
        return
    limit = sizes.decoder.max_positions
    if isinstance(max_context, bool) or not isinstance(max_context, int) or not 1 <= max_context <= limit:
        raise ValueError(
            f"max context = {max_context!r}: give a token count from 1 to the decoder's max_position_embeddings "
            f"({limit}), or leave it out for the default"
        )


def plan_rows(sizes: MemorySizes, frames: int, max_context: int, precision: str) -> tuple[Row, ...]:
    b = width(precision)
    params = sizes.params
    before = vision_before_merge(sizes.vision, frames, b)
    after = vision_after_merge(sizes.vision, frames, b)
    rows = [
        Row(f"vision weights ({params.vision:,} params, {'fp32' if b == 4 else 'fp16'})", params.vision * b),
        Row(
            f"decoder weights ({params.decoder:,} params, {precision})",
            decoder_weight_bytes(params, precision),
        ),
        Row(f"vision activations, before the first merge ({frames} frames)", before, counted=before >= after),
        Row(f"vision activations, after the first merge (<= {frames} frames)", after, counted=after > before),
        Row(f"KV cache ({max_context} tokens)", kv_cache_bytes(sizes.decoder, max_context, b)),
        Row(
            f"decoder activations (prefill of {max_context} tokens)",
            decoder_activation_bytes(sizes.decoder, max_context, b),
        ),
    ]
    margin = math.ceil(FRAGMENTATION * sum(row.bytes for row in rows if row.counted))
    return (
        *rows,
        Row("CUDA context", CUDA_CONTEXT),
        Row("TensorRT / TensorRT-LLM workspace", RUNTIME_WORKSPACE),
        Row(f"margin ({FRAGMENTATION:.0%} of the counted rows above: fragmentation)", margin),
    )


def plan_memory(
    sizes: MemorySizes,
    frames: int,
    target: str,
    *,
    max_context: int | None = None,
    decoder_precision: str = "fp16",
    model: str = "model",
) -> MemoryPlan:
    """The memory plan for B = `frames` at most, a context of `max_context` tokens (None: the default of the
    module docstring, which follows the frame count) and the decoder at `decoder_precision`, against
    `target` (a name of GPUS_GIB or '<N>GiB'); a plan that does not fit carries its fixes."""
    name, capacity = parse_target(target)
    check_settings(sizes, frames, max_context, decoder_precision, name)
    plan = settled_plan(sizes, frames, max_context, decoder_precision, name, capacity, model)
    return plan if plan.fits else replace(plan, fixes=find_fixes(sizes, plan, max_context))


def settled_plan(
    sizes: MemorySizes, frames: int, max_context: int | None, precision: str, target: str, capacity: int, model: str
) -> MemoryPlan:
    context = default_max_context(sizes, frames) if max_context is None else max_context
    return MemoryPlan(
        model=model,
        frames=frames,
        max_context=context,
        decoder_precision=precision,
        target=target,
        capacity=capacity,
        rows=plan_rows(sizes, frames, context, precision),
        decoder_weights={p: decoder_weight_bytes(sizes.params, p) for p in PRECISIONS},
    )


def find_fixes(sizes: MemorySizes, plan: MemoryPlan, max_context: int | None) -> Fixes:
    """Each change alone, everything else as planned (a default context follows the frame count). Every row
    grows with the frames and with the context, so the largest that fits is found by bisection."""

    def fits(frames: int = plan.frames, context: int | None = max_context, precision: str = plan.decoder_precision):
        return settled_plan(sizes, frames, context, precision, plan.target, plan.capacity, plan.model).fits

    planned = plan.decoder_weights[plan.decoder_precision]
    cheaper = [p for p in QUANTIZED if plan.decoder_weights[p] < planned and not (p == "fp8" and plan.target in NO_FP8)]
    precision = next((p for p in cheaper if fits(precision=p)), None)
    return Fixes(
        frames=largest(lambda f: fits(frames=f), MIN_FRAMES, plan.frames - 1),
        max_context=largest(lambda c: fits(context=c), 1, plan.max_context - 1),
        decoder_precision=precision,
        gpu=smallest_gpu(plan.total),
    )


def smallest_gpu(total: int) -> str | None:
    """The listed GPU with the least memory that holds `total` bytes (None: none does)."""
    holding = [gpu for gpu, size in GPUS_GIB.items() if total <= size * GIB]
    return min(holding, key=GPUS_GIB.get, default=None)


def largest(ok, low: int, high: int) -> int | None:
    """The largest n in [low, high] with ok(n), for ok true up to some n and false after (None: none)."""
    if high < low or not ok(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if ok(mid) else (low, mid - 1)
    return low


def check_fits(plan: MemoryPlan) -> None:
    """Refuse a plan that does not fit its target, naming the numbers and the options that would."""
    if not plan.fits:
        raise DoesNotFit(
            f"{plan.model} (frames {plan.frames}, max context {plan.max_context} tokens, decoder "
            f"{plan.decoder_precision}) needs {gib(plan.total)} GiB; {plan.verdict()}"
        )


def check_free_memory(plan: dict, free: int, total: int, device: str) -> None:
    """Refuse to load an engine whose memory plan (Manifest.memory_plan, MemoryPlan.to_dict()) needs more than the
    `free` bytes of `device` (`total` bytes in all; torch.cuda.mem_get_info). The CUDA context exists by the time
    free memory is read, so its row is not asked for again."""
    needed = plan["total_bytes"] - CUDA_CONTEXT
    if needed > free:
        raise DoesNotFit(
            f"this engine needs {gib(needed)} GiB of GPU memory (its plan: {plan['frames']} frames, max context "
            f"{plan['max_context']} tokens, decoder {plan['decoder_precision']}, {gib(plan['total_bytes'])} GiB with "
            f"the CUDA context) but {device} has {gib(free)} GiB free of {gib(total)} GiB: free the GPU (other "
            f"processes: nvidia-smi) or rebuild with build_engine --target-gpu {math.floor(free / GIB * 100) / 100}GiB "
            "for the options that fit"
        )

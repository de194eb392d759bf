"""The vision encoder as a chain of stretches with compression between them, for the backends that run the
stretches one call at a time (eager: `Stretch` modules; onnxruntime: one session per graph).

    pixels --stretch 0--> hidden (+ attention) --compress--> ... --stretch m--> tokens, scores --select--> Visual

The pixels arrive in chunks of frames as the video decodes: stretch 0 runs chunk by chunk (each frame is
independent of the others until the first merge), every later stretch on all frames at once.

`paper` (one merge layer): FrameMerge on the hidden states, TokenSelect by static/dynamic labels.
`official` (DESIGN.md section 4b): official_compress after every merge layer (hidden and attention rows merged
alike; the last one re-segments), official_select per segment. The methods `full` and `global_topk` run the
same stretches without compression.
"""

import itertools
import os
from collections.abc import Callable, Iterable, Sequence

import torch

from earlytom import compress
from earlytom.compress.official import band_width
from earlytom.compress.ops import REFERENCE, CompressOps
from earlytom.engine.layout import GraphSpec
from earlytom.runtime.backends.base import RunOptions, Visual


def kernel_ops(kernels: str, device: torch.device, aot_ops: CompressOps | None = None) -> CompressOps:
    """The compression implementation (both variants): the AOT-compiled kernels `aot_ops` (a KernelOps, loaded
    with the eager model) for "aot", the Triton JIT kernels on CUDA (or when forced), the PyTorch reference
    otherwise. Triton is imported only for the JIT: its interpreter mode is read at import."""
    if kernels == "aot":
        if aot_ops is None:
            raise ValueError(
                "kernels = 'aot' needs the AOT-compiled kernels loaded with the eager model: "
                "Pipeline.from_pretrained(..., aot_kernels=DIR) or --aot-kernels DIR"
            )
        return aot_ops
    if not (kernels == "triton" or (kernels == "auto" and device.type == "cuda")):
        return REFERENCE
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "kernels = 'triton' needs a CUDA device, or TRITON_INTERPRET=1 in the environment to interpret "
            "the kernels on CPU; use kernels = 'reference' (or 'auto') here"
        )
    from earlytom.plugins.triton.ops import JIT

    return JIT


def compose_source(source: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """source [F, 2] (first, last original frame of each input row), merged [N, 2] (first, last input row of
    each output row; the reference merge plans on the host) -> [N, 2] in original frames, on source's device."""
    merged = merged.to(source.device)
    return torch.stack([source[merged[:, 0], 0], source[merged[:, 1], 1]], 1)


def merge_step(ops: CompressOps, options: RunOptions, outputs: tuple[torch.Tensor, ...], *, last: bool):
    """One compression between stretches: a stretch's outputs (hidden [F, L, D], and with `official` at the last
    merge layer attention [F, L]) -> (the same merged to N frames, [N, 2] input rows merged, what selection needs:
    static labels (paper) or segments (official))."""
    c = options.config
    if c.variant == "paper":
        (hidden,) = outputs
        merged = ops.frame_merge(hidden, alpha=c.alpha, tau_seg=c.tau_seg, tau_merge=c.tau_merge)
        return (merged.hidden,), merged.source, merged.is_static
    hidden, attention = outputs if last else (outputs[0], None)
    merged = ops.official_compress(
        hidden, attention, tau_seg=c.tau_seg, alpha=c.alpha, max_window=c.max_window, final=last
    )
    return (merged.hidden, merged.attention)[: len(outputs)], merged.source, merged.segments


def select_step(
    ops: CompressOps, options: RunOptions, tokens, scores, labels, *, num_frames: int
) -> compress.SelectResult:
    """tokens [N, T, D'], scores [N, T] -> the tokens the method keeps (every one for "full")."""
    r = options.config.retain_ratio
    if options.method == "global_topk":
        return compress.global_topk(tokens, scores, retain_ratio=r, num_frames=num_frames)
    if options.method == "full":
        return compress.uniform(tokens, retain_ratio=1.0, num_frames=tokens.shape[0])
    if options.config.variant == "paper":
        return ops.token_select(tokens, scores, labels, retain_ratio=r, num_frames=num_frames)
    return ops.official_select(tokens, scores, labels, retain_ratio=r, num_frames=num_frames)


def first_stretch(stretch, spec: GraphSpec, chunks: Iterable[torch.Tensor], timer) -> dict[str, torch.Tensor]:
    """The first stretch over pixel chunks [b, *unit_shape] as they arrive (frames are independent until the first
    merge, so it starts before the last frame is decoded) -> its outputs by name, concatenated along frames."""
    parts = []
    for chunk in chunks:
        with timer.stage(spec.name):
            parts.append(stretch(chunk))
    return {name: torch.cat(outputs) for name, outputs in zip(spec.outputs, zip(*parts, strict=True), strict=True)}


def traced_plan(options: RunOptions, hidden: torch.Tensor, merged: torch.Tensor):
    """The decisions of a merge step on hidden [F, L, D] with their weights, for a trace: the reference plan (a
    MergePlan for paper, a CompressPlan for official), checked against the rows `merged` [N, 2] the step made."""
    c = options.config
    if c.variant == "paper":
        similarity = compress.adjacent_similarity(hidden).cpu()
        plan = compress.plan_merge(similarity, alpha=c.alpha, tau_seg=c.tau_seg, tau_merge=c.tau_merge)
    else:
        similarity = compress.window_similarity(hidden, band_width(c.max_window, hidden.shape[0])).cpu()
        segments = compress.plan_segments(similarity, alpha=c.alpha, tau_seg=c.tau_seg, max_window=c.max_window)
        plan = compress.plan_compress(similarity, segments)
    if not torch.equal(plan.source, merged.cpu()):
        raise RuntimeError("the traced merge plan differs from the kernels' merge; trace with kernels = 'reference'")
    return plan


def encode_chain(
    stretches: Sequence[Callable[..., tuple]],
    specs: Sequence[GraphSpec],
    pixels: Iterable[torch.Tensor],
    options: RunOptions,
    timer,
    suffix: torch.Tensor,
    aot_ops: CompressOps | None = None,
    trace: Callable[..., None] | None = None,
) -> Visual:
    """pixels: chunks [b, *unit_shape] of B units in all, through `stretches` (one per spec, taking the spec's
    inputs and returning its outputs in order; the first takes the pixels chunk by chunk) with the compression of
    `options` between them -> Visual (K selected tokens + the backbone's `suffix` [s, D']).

    `trace` (optional) sees the decisions: trace("merge", layer=l, frames=F, plan=plan) after each merge layer l
    (F rows in; plan.source [N, 2] and plan.weight [N, 2] the input rows and weights of each output row, plan.segments
    [S, 2] (official) or plan.segment [N] (paper) the segmentation; see traced_plan), then trace("select",
    selection=SelectResult, scores=[N, T], labels=the last merge's labels (paper is_static [N], official segments
    [S, 2] of the N rows; None without compression))."""
    chunks = iter(pixels)
    first = next(chunks, None)
    if first is None:
        raise ValueError("no frames to encode: the video gave none")
    ops = kernel_ops(options.kernels, first.device, aot_ops)  # refused before any work if the kernels cannot run here
    values = first_stretch(stretches[0], specs[0], itertools.chain([first], chunks), timer)
    B = values[specs[0].outputs[0]].shape[0]
    source = torch.arange(B, device=first.device)[:, None].expand(B, 2)
    frames_after, labels = {}, None
    for i, (stretch, spec) in enumerate(zip(stretches, specs, strict=True)):
        if i:
            with timer.stage(spec.name):
                values |= zip(spec.outputs, stretch(*(values[name] for name in spec.inputs)), strict=True)
        if spec.final or options.method != "earlytom":
            continue
        with timer.stage("frame_merge"):
            inputs = tuple(values[name] for name in spec.outputs)
            outputs, merged, labels = merge_step(ops, options, inputs, last=i == len(specs) - 2)
            values |= zip(spec.outputs, outputs, strict=True)
            source = compose_source(source, merged)
        frames_after[spec.stop - 1] = int(merged.shape[0])
        if trace is not None:
            plan = traced_plan(options, inputs[0], merged)
            trace("merge", layer=spec.stop - 1, frames=int(inputs[0].shape[0]), plan=plan)
    tokens, scores = values["tokens"], values["scores"]
    with timer.stage("token_select"):
        picked = select_step(ops, options, tokens, scores, labels, num_frames=B)
        embeds = torch.cat([picked.tokens, suffix.to(picked.tokens)])
    if trace is not None:
        trace("select", selection=picked, scores=scores, labels=labels)
    return Visual(embeds, picked.frame, picked.index, source, units=B, frames_after=frames_after)

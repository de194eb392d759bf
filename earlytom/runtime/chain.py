"""The vision encoder as a chain of stretches with compression between them, for the backends that run the
stretches one call at a time (eager: `Stretch` modules; onnxruntime: one session per graph).

    pixels --stretch 0--> hidden (+ attention) --compress--> ... --stretch m--> tokens, scores --select--> Visual

`Cascade` is the chain (DESIGN.md section 9): frames arrive in chunks as the video decodes (or a live source sends
them); stretch 0 runs on each chunk, the streaming compression after it (`StreamingOfficialCompress`,
`StreamingFrameMerge`) emits a segment's frames once the frame after the segment arrives, the next stretch runs on
the emitted frames once BATCH_FRAMES of them wait, and so on to the last stretch, whose tokens and scores are the
candidates of each output frame; the re-segmentation after the last merge streams too. Only selection (r_hat needs
B and N) waits for the end. Hidden states and attention are held only for open segments and the batches in flight;
what grows is the candidates [N, T, D'] (a stream bounds them with `keep_last`). A finite video gets exactly the
decisions of the whole-video chain: each stretch treats its frames independently, and the streaming forms decide
as the batch functions do.

`paper` (one merge layer): FrameMerge on the hidden states, TokenSelect by static/dynamic labels.
`official` (DESIGN.md section 4b): the compression after every merge layer (hidden and attention rows merged
alike; the last one re-segments), official_select per segment. The methods `full` and `global_topk` run the
same stretches without compression.

The Triton and AOT kernels (`kernels` triton / aot, or auto on CUDA) compress whole videos, as the TensorRT
plugins do: with them `encode_chain` runs the whole-video chain (`encode_whole`), stretch 0 chunk by chunk and
every later stretch on all frames at once.

A `trace` (earlytom explain) runs the whole-video chain too: it sees every merge layer's plan over all its frames
(with the reference plan's weights), which the cascade's decisions equal (tests/test_cascade.py).
"""

import copy
import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from earlytom import compress
from earlytom.compress.official import band_width
from earlytom.compress.ops import REFERENCE, CompressOps
from earlytom.engine.layout import GraphSpec
from earlytom.runtime.backends.base import RunOptions, Visual
from earlytom.runtime.methods import BASELINES, method_select

# Frames a later stretch gathers before it runs in an offline request (all that wait, when the video ends): the
# merges emit a segment's frames at a time, 1 to max_window - 1; an open stream runs them as they come.
BATCH_FRAMES = 8


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
    inputs and returning its outputs in order) with the compression of `options` between them -> Visual (the
    selected tokens + the backbone's `suffix` [s, D']): the cascade, or the whole-video chain (encode_whole) when
    the compression runs on kernels or a `trace` asks for every merge layer's plan (see encode_whole)."""
    chunks = iter(pixels)
    first = next(chunks, None)
    if first is None:
        raise ValueError("no frames to encode: the video gave none")
    ops = kernel_ops(options.kernels, first.device, aot_ops)  # refused before any work if the kernels cannot run here
    chunks = itertools.chain([first], chunks)
    if ops is not REFERENCE or trace is not None or options.method in BASELINES:  # the compared methods: all frames
        return encode_whole(stretches, specs, chunks, options, timer, suffix, ops, trace)
    cascade = Cascade(stretches, specs, options, timer, suffix)
    for chunk in chunks:
        cascade.push(chunk)
    return cascade.finish()


def first_stretch(stretch, spec: GraphSpec, chunks: Iterable[torch.Tensor], timer) -> dict[str, torch.Tensor]:
    """The first stretch over pixel chunks [b, *unit_shape] as they arrive (frames are independent until the first
    merge, so it starts before the last frame is decoded) -> its outputs by name, concatenated along frames."""
    parts = []
    for chunk in chunks:
        with timer.stage(spec.name):
            parts.append(stretch(chunk))
    return {name: torch.cat(outputs) for name, outputs in zip(spec.outputs, zip(*parts, strict=True), strict=True)}


def encode_whole(stretches, specs, chunks, options: RunOptions, timer, suffix, ops: CompressOps, trace=None) -> Visual:
    """The whole-video chain on the compression `ops`: stretch 0 chunk by chunk, every later stretch and every
    compression on all frames at once (see encode_chain).

    `trace` (optional) sees the decisions: trace("merge", layer=l, frames=F, plan=plan) after each merge layer l
    (F rows in; plan.source [N, 2] and plan.weight [N, 2] the input rows and weights of each output row, plan.segments
    [S, 2] (official) or plan.segment [N] (paper) the segmentation; see traced_plan), then trace("select",
    selection=SelectResult, scores=[N, T], labels=the last merge's labels (paper is_static [N], official segments
    [S, 2] of the N rows; None without compression))."""
    values = first_stretch(stretches[0], specs[0], chunks, timer)
    first = values[specs[0].outputs[0]]
    B = first.shape[0]
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
        if options.method in BASELINES:
            picked = method_select(options.method, options.config.retain_ratio, values)
        else:
            picked = select_step(ops, options, tokens, scores, labels, num_frames=B)
        embeds = torch.cat([picked.tokens, suffix.to(picked.tokens)])
    if trace is not None:
        trace("select", selection=picked, scores=scores, labels=labels)
    return Visual(embeds, picked.frame, picked.index, source, units=B, frames_after=frames_after)


class Spans:
    """The (first, last) original unit of each frame entering a merge, from the oldest frame it has not yet decided
    on: add() them as the frames arrive; compose(rows) maps the rows [n, 2] a merge emitted (indices counted from
    the start) to original units and forgets every frame up to the last row (a merge emits in order)."""

    def __init__(self) -> None:
        self.base = 0  # index of the first row held
        self.rows = torch.empty(0, 2, dtype=torch.int64)  # [h, 2], replaced (never changed in place)

    def add(self, spans: torch.Tensor) -> None:
        self.rows = torch.cat([self.rows, spans])

    def compose(self, rows: torch.Tensor) -> torch.Tensor:
        local = rows - self.base
        source = torch.stack([self.rows[local[:, 0], 0], self.rows[local[:, 1], 1]], 1)
        done = int(local.max()) + 1
        self.rows, self.base = self.rows[done:], self.base + done
        return source


@dataclass(frozen=True)
class Emitted:
    """Frames a streaming merge emitted: inputs of the next stretch (hidden [n, L, D] (+ attention [n, L])),
    rows [n, 2] merged (indices from the start), labels (the last official merge: the re-segments [S, 2] of its
    output frames that closed; paper: is_static [n]; else None) and segment [n] (paper) or None."""

    inputs: tuple[torch.Tensor, ...]
    rows: torch.Tensor
    labels: torch.Tensor | None
    segment: torch.Tensor | None = None


class OfficialMerge:
    """StreamingOfficialCompress between two stretches. A merge layer before the last has no attention (none is
    computed there): the streaming form is given zeros for it, and its merged attention is dropped."""

    def __init__(self, options: RunOptions, *, last: bool) -> None:
        c = options.config
        self.last = last
        self.merger = compress.StreamingOfficialCompress(
            tau_seg=c.tau_seg, alpha=c.alpha, max_window=c.max_window, final=last
        )

    def push(self, outputs: tuple[torch.Tensor, ...]) -> list[Emitted]:
        """A stretch's outputs for b frames (hidden [b, L, D], attention [b, L] at the last merge layer)."""
        hidden = outputs[0]
        attention = outputs[1] if self.last else hidden.new_zeros(hidden.shape[:2], dtype=torch.float32)
        chunks = (self.merger.push(h, a) for h, a in zip(hidden, attention, strict=True))
        return [self.emitted(chunk) for chunk in chunks if chunk is not None]

    def finish(self) -> list[Emitted]:
        return [self.emitted(self.merger.finish())]

    def emitted(self, chunk: compress.CompressResult) -> Emitted:
        inputs = (chunk.hidden, chunk.attention) if self.last else (chunk.hidden,)
        return Emitted(inputs, chunk.source, chunk.segments)


class PaperMerge:
    """StreamingFrameMerge between the two stretches of the paper variant."""

    def __init__(self, options: RunOptions) -> None:
        c = options.config
        self.merger = compress.StreamingFrameMerge(alpha=c.alpha, tau_seg=c.tau_seg, tau_merge=c.tau_merge)

    def push(self, outputs: tuple[torch.Tensor, ...]) -> list[Emitted]:
        return [self.emitted(frames) for frames in (self.merger.push(h) for h in outputs[0]) if frames]

    def finish(self) -> list[Emitted]:
        frames = self.merger.finish()
        return [self.emitted(frames)] if frames else []

    @staticmethod
    def emitted(frames: list[compress.merge.MergedFrame]) -> Emitted:
        return Emitted(
            (torch.stack([f.hidden for f in frames]),),
            torch.tensor([[f.first, f.last] for f in frames], dtype=torch.int64),
            torch.tensor([f.is_static for f in frames], dtype=torch.bool),
            torch.tensor([f.segment for f in frames], dtype=torch.int64),
        )


def streaming_merges(options: RunOptions, count: int) -> list:
    """The streaming compression after each of the `count` stretches before the last (None: the method compresses
    nothing)."""
    if options.method != "earlytom":
        return [None] * count
    if options.config.variant == "paper":
        return [PaperMerge(options)]
    return [OfficialMerge(options, last=i == count - 1) for i in range(count)]


@dataclass(frozen=True)
class Candidate:
    """One output frame of the last stretch: tokens [T, D'], scores [T], source (first, last original unit)."""

    tokens: torch.Tensor
    scores: torch.Tensor
    source: tuple[int, int]


class Cascade:
    """The chain over frames as they arrive (see the module docstring). push(pixels [b, *unit_shape]) runs it as
    far as the frames decide; finish() closes every open segment, runs the stretches on what waits, and selects
    -> Visual. fork() copies the state (sharing the tensors, which nothing changes in place) so that finishing the
    copy answers for the frames so far while the original goes on; keep_last(units) lets whole segments leave.

    Output frames of the last stretch are counted from the start of the video ("global"); `candidates` holds
    those from `dropped` on, `closed` the final segments (first, last) that closed, `static` (paper) the label of
    every frame the last merge emitted from `dropped` on, `start` the first unit of the window.
    """

    def __init__(self, stretches, specs, options: RunOptions, timer, suffix, *, batch: int = BATCH_FRAMES) -> None:
        self.stretches, self.specs, self.options, self.timer = stretches, specs, options, timer
        if options.method in BASELINES:
            raise ValueError(f"method = {options.method!r} segments the whole video at once: it does not stream")
        self.suffix, self.batch = suffix, batch
        self.merges = streaming_merges(options, len(specs) - 1)
        self.spans = [Spans() for _ in self.merges]  # per merge: its input frames not yet decided on
        self.emitted = [0] * len(self.merges)  # frames each merge emitted
        self.waiting: list[list[tuple]] = [[] for _ in specs]  # per stretch: (inputs, spans [n, 2]) to run
        self.units = 0  # units pushed
        self.candidates: list[Candidate] = []
        self.closed: list[tuple[int, int]] = []
        self.static: list[bool] = []
        self.dropped = 0
        self.start = 0  # the window's first unit
        self.segment, self.segment_start = -1, 0  # paper: the open segment's id and first frame

    @property
    def merging(self) -> bool:
        return bool(self.merges) and self.merges[-1] is not None

    def push(self, pixels: torch.Tensor) -> None:
        """pixels [b, *unit_shape]: the next b units of the video."""
        b = pixels.shape[0]
        spans = torch.arange(self.units, self.units + b)[:, None].expand(b, 2)
        self.units += b
        self.run(0, (pixels,), spans)

    def fork(self, timer) -> "Cascade":
        """A copy that times its work on `timer`."""
        other = copy.copy(self)
        other.timer = timer
        other.merges = copy.deepcopy(self.merges)  # the open segments: a few frames per merge
        other.spans = [copy.copy(spans) for spans in self.spans]
        other.emitted, other.waiting = list(self.emitted), [list(w) for w in self.waiting]
        other.candidates, other.closed, other.static = list(self.candidates), list(self.closed), list(self.static)
        return other

    def finish(self) -> Visual:
        """Close every open segment, stretch after stretch, and select -> Visual of the frames pushed (the window)."""
        if not self.units:
            raise ValueError("no frames to encode: the video gave none")
        for i, merge in enumerate([*self.merges, None]):
            self.flush(i)
            if merge is not None:
                with self.timer.stage("frame_merge"):
                    emitted = merge.finish()
                self.forward(i, emitted)
        if self.merging and self.options.config.variant == "paper" and self.segment >= 0:
            self.closed.append((self.segment_start, self.emitted[-1] - 1))
        return self.select()

    def keep_last(self, units: int) -> None:
        """Let the oldest closed final segments leave while more than `units` units are in the window (the first
        candidate's first unit to the newest unit); open segments, and frames still on their way, stay."""
        while self.closed and self.units - self.start > units:
            first, last = self.closed[0]
            if last >= self.dropped + len(self.candidates):
                return  # the last stretch has not run on all of it yet
            self.closed.pop(0)
            self.start = self.candidates[last - first].source[1] + 1  # the next segment's head is the next unit
            del self.candidates[: last + 1 - first]
            del self.static[: last + 1 - first]
            self.dropped = last + 1

    def run(self, i: int, inputs: tuple[torch.Tensor, ...], spans: torch.Tensor) -> None:
        """Stretch i on a batch of frames with their spans [n, 2], then what comes after it."""
        with self.timer.stage(self.specs[i].name):
            outputs = tuple(self.stretches[i](*inputs))
        if i == len(self.merges):
            return self.collect(outputs, spans)
        merge = self.merges[i]
        if merge is None:
            return self.wait(i + 1, outputs, spans)
        self.spans[i].add(spans)
        with self.timer.stage("frame_merge"):
            emitted = merge.push(outputs)
        self.forward(i, emitted)

    def forward(self, i: int, emitted: list[Emitted]) -> None:
        """Frames merge i emitted -> the stretch after it (their spans composed)."""
        for e in emitted:
            source = self.spans[i].compose(e.rows)
            if i == len(self.merges) - 1:
                self.label(e, self.emitted[i])
            self.emitted[i] += len(e.rows)
            self.wait(i + 1, e.inputs, source)

    def label(self, e: Emitted, first: int) -> None:
        """The final segments closed by the last merge's frames `first` (global) on: the official re-segments as
        they come; a paper segment when a frame of the next one comes."""
        if self.options.config.variant == "official":
            self.closed += [tuple(s) for s in e.labels.tolist()]
            return
        self.static += e.labels.tolist()
        for k, segment in enumerate(e.segment.tolist()):
            if segment != self.segment and self.segment >= 0:
                self.closed.append((self.segment_start, first + k - 1))
            if segment != self.segment:
                self.segment, self.segment_start = segment, first + k

    def wait(self, i: int, inputs: tuple[torch.Tensor, ...], spans: torch.Tensor) -> None:
        self.waiting[i].append((inputs, spans))
        if sum(len(s) for _, s in self.waiting[i]) >= self.batch:
            self.flush(i)

    def flush(self, i: int) -> None:
        """Run stretch i on every frame waiting for it."""
        if not self.waiting[i]:
            return
        batches, self.waiting[i] = self.waiting[i], []
        inputs, spans = zip(*batches, strict=True)
        self.run(i, tuple(torch.cat(parts) for parts in zip(*inputs, strict=True)), torch.cat(spans))

    def collect(self, outputs: tuple[torch.Tensor, ...], spans: torch.Tensor) -> None:
        tokens, scores = outputs[:2]  # then the compared methods' inputs, on an engine built with them (unread here)
        first = self.dropped + len(self.candidates)
        rows = zip(tokens, scores, spans.tolist(), strict=True)
        self.candidates += [Candidate(t, s, tuple(span)) for t, s, span in rows]
        if not self.merging:  # nothing merged: each frame is a segment of its own
            self.closed += [(j, j) for j in range(first, first + len(tokens))]

    def labels(self, device: torch.device) -> torch.Tensor | None:
        """What selection reads of the window: official segments [S, 2], paper is_static [N], else None."""
        if not self.merging:
            return None
        if self.options.config.variant == "paper":
            return torch.tensor(self.static, dtype=torch.bool, device=device)
        return torch.tensor(self.closed, dtype=torch.int64, device=device).view(-1, 2) - self.dropped

    def select(self) -> Visual:
        tokens = torch.stack([c.tokens for c in self.candidates])
        scores = torch.stack([c.scores for c in self.candidates])
        source = torch.tensor([c.source for c in self.candidates], device=tokens.device) - self.start
        B = self.units - self.start
        with self.timer.stage("token_select"):
            picked = select_step(REFERENCE, self.options, tokens, scores, self.labels(tokens.device), num_frames=B)
            embeds = torch.cat([picked.tokens, self.suffix.to(picked.tokens)])
        merged = zip(self.specs[:-1], self.emitted, self.merges, strict=True)
        frames_after = {spec.stop - 1: n for spec, n, merge in merged if merge is not None}
        return Visual(embeds, picked.frame, picked.index, source, units=B, frames_after=frames_after)

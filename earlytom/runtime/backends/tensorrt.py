"""The TensorRT backend at run time: the vision plans (one per graph of the chain) on one CUDA stream with
buffers allocated once at the largest shapes, and the TensorRT-LLM decoder fed the visual tokens as a prompt
table (a decoder with M-RoPE, built through TensorRT-LLM's Qwen2-VL path: with each request's rotary table of its
M-RoPE position ids and the position delta of the generated tokens, `mrope_params`).

Each plan that merges writes the merged frames under the names the next plan reads, so the next plan reads
them in place (no copy); the host round trips are the 4-byte frame count after each merge (it sets the next
plan's input shapes) and K at the end. The selected
tokens stay on the GPU until the decoder takes them. Buffer sizes and the prompt layout are plain functions,
tested without a GPU; the classes follow the TensorRT / TensorRT-LLM documented APIs and have not run on
this project's machines.

Unlike the eager and onnxruntime backends (earlytom.runtime.chain.Cascade: the chain streams over chunks of
frames), this backend keeps whole-video plans: every plan after the first runs on all frames at once, as its
plugins compress whole videos, so its memory grows with the frames and it offers no open_stream.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from earlytom.dtypes import torch_dtype
from earlytom.engine.directory import EngineDir
from earlytom.engine.manifest import Manifest, check_compatible
from earlytom.engine.memory_plan import check_free_memory
from earlytom.engine.sizes import row_shape, selected_bound
from earlytom.runtime.backends.base import RunOptions, Text, UnsupportedOption, Visual, refuse_changes
from earlytom.runtime.chain import compose_source


@dataclass(frozen=True)
class BufferSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


def buffer_specs(manifest: Manifest) -> dict[str, BufferSpec]:
    """Every I/O tensor of every plan at its largest shape (B = the units of max_frames frames, K = selected_bound),
    one buffer per name: a plan's input is the buffer the earlier plan of the same output name wrote (read in
    place)."""
    v, dtype, config = manifest.vision, torch_dtype(manifest.dtype), manifest.config
    B = v.units(manifest.max_frames)
    K = selected_bound(config, v, B)
    i32 = torch.int32
    frames = {  # every graph input: pixels, then what each merge writes for the next graph (attention in fp32)
        name: BufferSpec((B, *row_shape(name, v)), torch.float32 if name.startswith("attention_") else dtype)
        for graph in manifest.graphs
        for name in graph.inputs
    }
    labels = {"segment": i32, "is_static": i32, "s": torch.float32} if config.variant == "paper" else {}
    return {
        **frames,
        "count": BufferSpec((1 if config.variant == "paper" else 2,), i32),  # official: (N, segments)
        "first": BufferSpec((B,), i32),
        "last": BufferSpec((B,), i32),
        **{name: BufferSpec((B,), t) for name, t in labels.items()},
        "selected": BufferSpec((K, v.llm_hidden), dtype),
        "frame": BufferSpec((K,), i32),
        "index": BufferSpec((K,), i32),
        "selected_count": BufferSpec((1,), i32),
    }


# TensorRT-LLM's names of the checkpoint dtypes (config.json's pretrained_config.dtype)
TRTLLM_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def trtllm_dtype(engine_config: dict) -> torch.dtype:
    """The activation dtype of a TensorRT-LLM engine from its config.json (the prompt table must be in it): the
    checkpoint's dtype, float16 for ModelOpt's fp8 and int4_awq checkpoints (their unquantized parts)."""
    name = engine_config.get("pretrained_config", {}).get("dtype")
    if name not in TRTLLM_DTYPES:
        raise ValueError(
            f"the TensorRT-LLM engine's config.json gives pretrained_config.dtype = {name!r}, not one of "
            f"{', '.join(TRTLLM_DTYPES)}; rebuild the engine directory with build_engine --backend tensorrt"
        )
    return TRTLLM_DTYPES[name]


def trtllm_context(engine_config: dict, max_positions: int) -> int:
    """The longest sequence a TensorRT-LLM engine takes: its build_config.max_seq_len (build_engine --max-context),
    at most the decoder's max_position_embeddings."""
    return min(engine_config.get("build_config", {}).get("max_seq_len", max_positions), max_positions)


def check_device_memory(manifest: Manifest, device: torch.device) -> None:  # pragma: no cover - needs a GPU
    """Refuse an engine whose memory plan needs more than `device` has free (engines built without a plan load)."""
    if manifest.memory_plan is not None:
        free, total = torch.cuda.mem_get_info(device)
        check_free_memory(manifest.memory_plan, free, total, str(device))


@dataclass(frozen=True)
class Mrope:
    """M-RoPE as TensorRT-LLM's attention applies it: rotary base `theta`, `head_size`, `section` (the t, h, w
    frequency counts of the half head: [16, 24, 24] of Qwen2.5-VL's 64), `max_positions` (the table's rows)."""

    theta: float
    head_size: int
    section: tuple[int, ...]
    max_positions: int

    @classmethod
    def of(cls, text_config) -> "Mrope | None":
        """From a transformers text config; None when its rotary embedding is not M-RoPE (no mrope_section)."""
        rope = getattr(text_config, "rope_parameters", None) or {}
        if "mrope_section" not in rope:
            return None
        head = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        section = tuple(rope["mrope_section"])
        if len(section) != 3 or sum(section) != head // 2:
            raise ValueError(f"mrope_section {section}: three counts adding up to half the head size {head}")
        return cls(float(rope["rope_theta"]), head, section, text_config.max_position_embeddings)


def mrope_table(positions: torch.Tensor, mrope: Mrope) -> torch.Tensor:
    """float32 [max_positions * head_size]: TensorRT-LLM's mrope_rotary_cos_sin of one request with M-RoPE position
    ids `positions` [3, S] (rows t, h, w): for prompt token s (then zero rows: position 0) and frequency j of the half
    head, the pair (cos, sin) of p * theta^(-2j / head_size), p the row of j's section (the first section's
    frequencies take t, the second's h, the third's w), as TensorRT-LLM's multimodal runner lays it out."""
    if positions.dim() != 2 or positions.shape[0] != 3 or positions.shape[1] > mrope.max_positions:
        raise ValueError(
            f"positions must be [3, S] with S <= {mrope.max_positions} (the decoder's max_position_embeddings), got "
            f"{list(positions.shape)}"
        )
    inv_freq = 1.0 / mrope.theta ** (torch.arange(0, mrope.head_size, 2, dtype=torch.float32) / mrope.head_size)
    row = torch.repeat_interleave(torch.arange(3), torch.tensor(mrope.section))  # [head/2]: each frequency's row
    padded = torch.zeros(3, mrope.max_positions, dtype=torch.float32)
    padded[:, : positions.shape[1]] = positions.cpu().float()
    angle = padded[row].T * inv_freq  # [max_positions, head/2]
    return torch.stack([angle.cos(), angle.sin()], dim=-1).reshape(-1)


def mrope_delta(positions: torch.Tensor) -> int:
    """TensorRT-LLM's mrope_position_deltas of one request with M-RoPE position ids [3, S]: generated token i
    (0-based) takes position S + i + delta on every row; delta = max(positions) + 1 - S (transformers' rope_deltas)."""
    return int(positions.max()) + 1 - positions.shape[-1]


def mrope_params(positions: torch.Tensor, mrope: Mrope) -> tuple[torch.Tensor, torch.Tensor]:
    """One request's (mrope_rotary_cos_sin float32 [1, max_positions * head_size], mrope_position_deltas int32
    [1, 1]) for TensorRT-LLM's MropeParams, from the decoder side's position ids [3, 1, S]."""
    rows = positions[:, 0]
    return mrope_table(rows, mrope)[None], torch.tensor([[mrope_delta(rows)]], dtype=torch.int32)


def prompt_table_ids(before: torch.Tensor, visual_tokens: int, after: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """TensorRT-LLM's prompt-table convention: the visual positions carry ids vocab_size + i, i < visual_tokens,
    which the engine replaces by row i of the prompt table. -> int32 [P + visual_tokens + Q]."""
    fake = vocab_size + torch.arange(visual_tokens)
    return torch.cat([before, fake, after]).to(torch.int32)


class TensorRTVision:  # pragma: no cover - needs TensorRT and a GPU
    """Runs the vision plans of an engine directory in chain order (paper: vision_head + FrameMerge,
    vision_tail + TokenSelect; official: each stretch + its compression, the tail + selection)."""

    def __init__(self, directory: Path, manifest: Manifest, suffix: torch.Tensor):
        import tensorrt as trt

        major, minor = torch.cuda.get_device_capability()
        check_compatible(manifest.tensorrt, tensorrt_version=trt.__version__, gpu_arch=f"sm_{major}{minor}")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.graphs = manifest.graphs
        self.engines = [
            runtime.deserialize_cuda_engine((directory / f"{graph.name}.plan").read_bytes()) for graph in self.graphs
        ]
        self.contexts = [engine.create_execution_context() for engine in self.engines]
        self.buffers = {
            name: torch.empty(s.shape, dtype=s.dtype, device="cuda") for name, s in buffer_specs(manifest).items()
        }
        self.inputs = []  # per plan: its input names (dimension 0 is the frame axis)
        for engine, context in zip(self.engines, self.contexts, strict=True):
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            for tensor in names:
                context.set_tensor_address(tensor, self.buffers[tensor].data_ptr())
            self.inputs.append([n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT])
        self.stream = torch.cuda.Stream()
        self.suffix = suffix.cuda()

    def run_plan(self, i: int, rows: int) -> None:
        """Plan i on `rows` frames (every input's dimension 0), enqueued on the stream."""
        for name in self.inputs[i]:
            self.contexts[i].set_input_shape(name, (rows, *self.buffers[name].shape[1:]))
        if not self.contexts[i].execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.graphs[i].name}.plan failed to run")

    def encode_video(self, pixels: torch.Tensor, timer) -> Visual:
        B, b = pixels.shape[0], self.buffers
        rows, frames_after = B, {}
        with torch.cuda.stream(self.stream):
            source = torch.arange(B, device="cuda")[:, None].expand(B, 2)  # original frames of each row
            b["pixels"][:B].copy_(pixels)  # host -> device on this stream
            for i, graph in enumerate(self.graphs):
                with timer.stage(graph.name):  # the stretch and its plugins (compression, or selection)
                    self.run_plan(i, rows)
                    count = int(b["selected_count" if graph.final else "count"][0].item())  # the host round trip
                if not graph.final:  # count = N frames after this merge: the next plan's frame axis
                    merged = torch.stack([b["first"][:count], b["last"][:count]], 1).long()
                    source = compose_source(source, merged)  # before the next merge overwrites first / last
                    frames_after[graph.stop - 1] = rows = count
            K = count
            embeds = torch.cat([b["selected"][:K], self.suffix.to(b["selected"].dtype)])
        return Visual(
            embeds=embeds,
            frame=b["frame"][:K].long().cpu(),
            index=b["index"][:K].long().cpu(),
            source=source.cpu(),
            units=B,
            frames_after=frames_after,
        )


class TensorRTLLMDecoder:  # pragma: no cover - needs TensorRT-LLM and a GPU
    """The decoder engine in decoder_trtllm/, given the visual tokens as a prompt table; with `mrope` (a decoder
    built through TensorRT-LLM's Qwen2-VL path) the family's decoder `side` gives the M-RoPE position ids."""

    def __init__(
        self, engine_dir: Path, vocab_size: int, context_length: int, dtype: torch.dtype, side, mrope: Mrope | None
    ) -> None:
        from tensorrt_llm.runtime import ModelRunnerCpp

        self.runner = ModelRunnerCpp.from_dir(engine_dir=str(engine_dir))
        self.vocab_size, self.context_length, self.dtype = vocab_size, context_length, dtype
        self.side, self.mrope = side, mrope
        self.inner_counts = None  # TensorRT-LLM runs no inner merge

    def positions(self, before, visual, after) -> torch.Tensor | None:
        """M-RoPE position ids [3, 1, S] from the decoder side; None without M-RoPE (TensorRT-LLM numbers the prompt
        0..S-1 itself)."""
        return None if self.mrope is None else self.side.positions(before, visual, after)

    def mrope_request(self, positions: torch.Tensor | None) -> dict:
        """generate's mrope_params for position ids [3, 1, S] (none without M-RoPE)."""
        if self.mrope is None:
            return {}
        from tensorrt_llm.layers import MropeParams

        table, deltas = mrope_params(positions, self.mrope)
        return {"mrope_params": MropeParams(mrope_rotary_cos_sin=table.cuda(), mrope_position_deltas=deltas.cuda())}

    def greedy(
        self, before, visual, after, *, max_new_tokens: int, eos: int, timer, on_token=None, positions=None
    ) -> list[int]:
        """As Decoder.greedy, with the visual embeddings as TensorRT-LLM's prompt table; `positions`: those of
        self.positions (M-RoPE), passed as TensorRT-LLM's rotary table and position delta."""
        ids = prompt_table_ids(before, visual.shape[0], after, self.vocab_size)
        with timer.stage("prefill"):  # TensorRT-LLM prefills and samples the first token in one call
            stream = self.runner.generate(
                batch_input_ids=[ids],
                prompt_table=visual[None].to(self.dtype),
                prompt_tasks="0",
                max_new_tokens=max_new_tokens,
                end_id=eos,
                pad_id=eos,
                top_k=1,
                streaming=True,
                return_dict=False,
                **self.mrope_request(positions),
            )
            output = next(stream)
        generated: list[int] = []
        with timer.stage("first_token"):
            generated += output[0, 0, len(ids) :].tolist()
        for token in generated if on_token else ():
            on_token(token)
        for output in stream:  # each output holds every id so far
            new = output[0, 0, len(ids) + len(generated) :].tolist()
            generated += new
            for token in new if on_token else ():
                on_token(token)
        return generated


class TensorRTBackend:  # pragma: no cover - needs TensorRT and a GPU
    """The compression and selection run inside the vision plans, so the vision stage is one call and every
    EarlyTom parameter, the method and the kernels are fixed at build time."""

    name = "tensorrt"
    video_device = torch.device("cuda")

    def __init__(self, engine: EngineDir, text: Text) -> None:
        manifest = engine.manifest
        self.manifest, self.text = manifest, text
        check_device_memory(manifest, torch.device("cuda", torch.cuda.current_device()))
        self.vision = TensorRTVision(engine.path, manifest, engine.suffix)
        decoder_config = AutoConfig.from_pretrained(engine.decoder_path)
        lm = decoder_config.get_text_config()
        engine_config = json.loads((engine.trtllm_path / "config.json").read_text())
        context = trtllm_context(engine_config, lm.max_position_embeddings)
        side = engine.family.decoder_side(decoder_config, manifest.vision)
        dtype = trtllm_dtype(engine_config)
        self.llm = TensorRTLLMDecoder(engine.trtllm_path, lm.vocab_size, context, dtype, side, Mrope.of(lm))
        self.defaults = RunOptions(config=manifest.config, num_frames=manifest.max_frames)

    def decoder(self, config):
        return self.llm  # built without the inner merge (the manifest's config says inner_ratio 0)

    def check(self, options: RunOptions) -> RunOptions:
        return check_fixed(self.defaults, options)

    def encode(self, pixels: Iterable[torch.Tensor], options: RunOptions, timer, trace=None) -> Visual:
        """pixels: chunks [b, *unit_shape], joined first: the head plan merges frames, so it needs all of them (no
        overlap of decoding and encoding here). The merges happen inside the plans: nothing to `trace`."""
        if trace is not None:
            raise UnsupportedOption(
                "the tensorrt backend merges inside its engines, out of sight of a trace: explain the same model "
                "with --model (eager) or an onnxruntime engine directory"
            )
        return self.vision.encode_video(torch.cat(list(pixels)), timer)


def check_fixed(defaults: RunOptions, options: RunOptions) -> RunOptions:
    """TensorRT engines run exactly what they were built for (frames: up to the build's maximum; how frames are
    sampled from the video is free)."""
    fixed = tuple(name for name in defaults.changed(options) if name not in ("num_frames", "sampling"))
    refuse_changes("tensorrt", defaults, options, fixed, "rebuild the engines with build_engine --backend tensorrt")
    if options.num_frames > defaults.num_frames:
        raise UnsupportedOption(
            f"frames = {options.num_frames} exceeds the {defaults.num_frames} frames the engines were built for"
        )
    return options

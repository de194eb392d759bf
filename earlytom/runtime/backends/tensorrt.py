"""The TensorRT backend at run time: the two vision plans on one CUDA stream with buffers allocated once at the
largest shapes, and the TensorRT-LLM decoder fed the visual tokens as a prompt table.

The head plan writes merged frames, their count and labels into buffers the tail plan reads in place (no
copy); the only host round trip is the 4-byte frame count that sets the tail's input shape. The selected
tokens stay on the GPU until the decoder takes them. Buffer sizes and the prompt layout are plain functions,
tested without a GPU; the classes follow the TensorRT / TensorRT-LLM documented APIs and have not run on
this project's machines.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from earlytom.compress import visual_budget
from earlytom.engine.layout import DECODER, DECODER_TRTLLM, IMAGE_NEWLINE, torch_dtype
from earlytom.engine.manifest import Manifest, check_compatible
from earlytom.runtime.backends.base import RunOptions, Text, UnsupportedOption, Visual, refuse_changes


def shared_buffers(manifest: Manifest) -> dict[str, str]:
    """Tail-plan inputs -> the head-plan buffers they read in place (the merged frames, their labels)."""
    return {manifest.graphs[1].inputs[0]: "merged", "is_static": "is_static"}


@dataclass(frozen=True)
class BufferSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


def buffer_specs(manifest: Manifest) -> dict[str, BufferSpec]:
    """Every I/O tensor of both plans at its largest shape (B = max_frames, K = round(r * B * T))."""
    v, B, dtype = manifest.vision, manifest.max_frames, torch_dtype(manifest.dtype)
    T = v.tokens_per_frame
    K = visual_budget(retain_ratio=manifest.config.retain_ratio, num_frames=B, tokens_per_frame=T, available=B * T)
    i32 = torch.int32
    return {
        "pixels": BufferSpec((B, 3, v.image_size, v.image_size), dtype),
        "merged": BufferSpec((B, v.patch_tokens, v.hidden), dtype),
        "count": BufferSpec((1,), i32),
        "first": BufferSpec((B,), i32),
        "last": BufferSpec((B,), i32),
        "segment": BufferSpec((B,), i32),
        "is_static": BufferSpec((B,), i32),
        "s": BufferSpec((B,), torch.float32),
        "selected": BufferSpec((K, v.llm_hidden), dtype),
        "frame": BufferSpec((K,), i32),
        "index": BufferSpec((K,), i32),
        "selected_count": BufferSpec((1,), i32),
    }


def prompt_table_ids(before: torch.Tensor, visual_tokens: int, after: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """TensorRT-LLM's prompt-table convention: the visual positions carry ids vocab_size + i, i < visual_tokens,
    which the engine replaces by row i of the prompt table. -> int32 [P + visual_tokens + Q]."""
    fake = vocab_size + torch.arange(visual_tokens)
    return torch.cat([before, fake, after]).to(torch.int32)


class TensorRTVision:  # pragma: no cover - needs TensorRT and a GPU
    """Runs vision_head.plan (encoder head + FrameMerge plugins) and vision_tail.plan (encoder tail +
    TokenSelect plugins) of an engine directory."""

    def __init__(self, directory: Path, manifest: Manifest, image_newline: torch.Tensor):
        import tensorrt as trt

        major, minor = torch.cuda.get_device_capability()
        check_compatible(manifest.tensorrt, tensorrt_version=trt.__version__, gpu_arch=f"sm_{major}{minor}")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {
            graph.name: runtime.deserialize_cuda_engine((directory / f"{graph.name}.plan").read_bytes())
            for graph in manifest.graphs
        }
        self.contexts = {name: engine.create_execution_context() for name, engine in self.engines.items()}
        specs, shared = buffer_specs(manifest), shared_buffers(manifest)
        self.tail_input = manifest.graphs[1].inputs[0]
        self.buffers = {name: torch.empty(s.shape, dtype=s.dtype, device="cuda") for name, s in specs.items()}
        for name, context in self.contexts.items():
            engine = self.engines[name]
            for i in range(engine.num_io_tensors):
                tensor = engine.get_tensor_name(i)
                context.set_tensor_address(tensor, self.buffers[shared.get(tensor, tensor)].data_ptr())
        self.stream = torch.cuda.Stream()
        self.image_newline = image_newline.cuda()

    def encode_video(self, pixels: torch.Tensor, timer) -> Visual:
        B = pixels.shape[0]
        head, tail = self.contexts["vision_head"], self.contexts["vision_tail"]
        with timer.stage("vision_head"), torch.cuda.stream(self.stream):  # includes the FrameMerge plugins
            self.buffers["pixels"][:B].copy_(pixels)  # host -> device on this stream
            head.set_input_shape("pixels", tuple(pixels.shape))
            if not head.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("vision_head.plan failed to run")
            N = int(self.buffers["count"].item())  # the one host round trip: it sets the tail's shape
        with timer.stage("vision_tail"), torch.cuda.stream(self.stream):  # includes the TokenSelect plugins
            L, D = self.buffers["merged"].shape[1:]
            tail.set_input_shape(self.tail_input, (N, L, D))
            tail.set_input_shape("is_static", (N,))
            if not tail.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("vision_tail.plan failed to run")
            K = int(self.buffers["selected_count"].item())
            b = self.buffers
            embeds = torch.cat([b["selected"][:K], self.image_newline[None].to(b["selected"].dtype)])
        source = torch.stack([b["first"][:N], b["last"][:N]], 1).long().cpu()
        return Visual(
            embeds=embeds, frame=b["frame"][:K].long().cpu(), index=b["index"][:K].long().cpu(), source=source
        )


class TensorRTLLMDecoder:  # pragma: no cover - needs TensorRT-LLM and a GPU
    """The decoder engine in decoder_trtllm/, given the visual tokens as a prompt table."""

    def __init__(self, engine_dir: Path, vocab_size: int, context_length: int, dtype: torch.dtype) -> None:
        from tensorrt_llm.runtime import ModelRunnerCpp

        self.runner = ModelRunnerCpp.from_dir(engine_dir=str(engine_dir))
        self.vocab_size, self.context_length, self.dtype = vocab_size, context_length, dtype
        self.inner_counts = None  # TensorRT-LLM runs no inner merge

    def greedy(self, before, visual, after, *, max_new_tokens: int, eos: int, timer, on_token=None) -> list[int]:
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
    """FrameMerge and TokenSelect run inside the vision plans, so the vision stage is one call and every
    EarlyTom parameter, the method and the kernels are fixed at build time."""

    name = "tensorrt"

    def __init__(self, directory: Path, manifest: Manifest, text: Text) -> None:
        self.manifest, self.text = manifest, text
        newline = load_file(directory / IMAGE_NEWLINE)["image_newline"]
        self.vision = TensorRTVision(directory, manifest, newline)
        lm = AutoConfig.from_pretrained(directory / DECODER)
        dtype = torch_dtype(manifest.dtype)
        self.llm = TensorRTLLMDecoder(directory / DECODER_TRTLLM, lm.vocab_size, lm.max_position_embeddings, dtype)
        self.defaults = RunOptions(config=manifest.config, num_frames=manifest.max_frames)

    def decoder(self, config):
        return self.llm  # built without the inner merge (the manifest's config says inner_ratio 0)

    def check(self, options: RunOptions) -> RunOptions:
        return check_fixed(self.defaults, options)

    def encode(self, pixels: torch.Tensor, options: RunOptions, timer) -> Visual:
        return self.vision.encode_video(pixels, timer)


def check_fixed(defaults: RunOptions, options: RunOptions) -> RunOptions:
    """TensorRT engines run exactly what they were built for (frames: up to the build's maximum)."""
    fixed = tuple(name for name in defaults.changed(options) if name != "num_frames")
    refuse_changes("tensorrt", defaults, options, fixed, "rebuild the engines with build_engine --backend tensorrt")
    if options.num_frames > defaults.num_frames:
        raise UnsupportedOption(
            f"frames = {options.num_frames} exceeds the {defaults.num_frames} frames the engines were built for"
        )
    return options

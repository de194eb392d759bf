"""File names of an engine directory, the precisions it may hold, and its vision graphs.

The vision encoder runs as a chain of stretches, one graph each, split after every merge layer:

    vision_head   pixels [B, 3, S, S] -> hidden_<l1> [B, L, D] (+ attention_<l1> [B, L])    layers [0, l1]
    vision_mid<i> hidden_<l> [N, L, D] -> hidden_<l'> (+ attention_<l'>)               layers (l, l']
    vision_tail   hidden_<lm> [N, L, D] (+ attention_<lm> [N, L]) -> tokens [N, T, D'], scores [N, T]
                                                   layers (lm, n), projector, pooling

"Frames" here are the encoder's units (earlytom.models.backbone); pixels [B, *unit_shape].

Tensors are named after the layer whose output they are, so a graph's input is the merged form of the
previous graph's output of the same name. With the `paper` variant (one merge layer) the chain is head and
tail; its tail computes the scores as the attention received in the last layer. With `official` the graph that
ends at the last merge layer also outputs the attention received in that layer (the only one selection reads),
and the tail pools the merged attention it is given as the scores.
"""

from dataclasses import dataclass, replace

FORMAT = "earlytom-engine/4"
MANIFEST = "manifest.json"
DECODER = "decoder"  # the language model, a transformers checkpoint (safetensors)
DECODER_TRTLLM = "decoder_trtllm"  # its TensorRT-LLM engine (tensorrt backend)
TOKENIZER = "tokenizer"
PREPROCESSOR = "preprocessor.json"
VISUAL_SUFFIX = "visual_suffix.safetensors"  # embeddings appended after the selected tokens ([0, D'] if none)
PLUGINS = "plugins"  # plugins/<arch>/: the AOT-compiled kernels
TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class GraphSpec:
    """One stretch of the encoder as a graph: its name (file stem), I/O names, and the encoder layers
    [start, stop) it runs; `final` graphs end with the projector and pooling."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    start: int
    stop: int

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def final(self) -> bool:
        return "tokens" in self.outputs

    @property
    def takes_attention(self) -> bool:
        return any(name.startswith("attention_") for name in self.inputs)

    @property
    def gives_attention(self) -> bool:
        return any(name.startswith("attention_") for name in self.outputs)


def stretch_name(i: int, count: int) -> str:
    return "vision_head" if i == 0 else "vision_tail" if i == count - 1 else f"vision_mid{i}"


def vision_chain(variant: str, merge_layers: tuple[int, ...], num_layers: int) -> tuple[GraphSpec, ...]:
    """The graphs for compression after each of `merge_layers` (0-based, strictly increasing, < num_layers)."""
    if not merge_layers or list(merge_layers) != sorted(set(merge_layers)) or not 0 <= merge_layers[0]:
        raise ValueError(f"merge layers = {merge_layers}: give strictly increasing layer indices")
    if merge_layers[-1] >= num_layers:
        raise ValueError(f"merge layers = {merge_layers}: this encoder has layers 0..{num_layers - 1}")
    bounds = [0, *(layer + 1 for layer in merge_layers), num_layers]
    official = variant == "official"
    count = len(bounds) - 1

    def tensors(layer: int, attention: bool) -> tuple[str, ...]:
        return (f"hidden_{layer}", f"attention_{layer}") if attention else (f"hidden_{layer}",)

    chain = []
    for i in range(count):
        final = i == count - 1
        inputs = ("pixels",) if i == 0 else tensors(bounds[i] - 1, official and final)
        outputs = ("tokens", "scores") if final else tensors(bounds[i + 1] - 1, official and i == count - 2)
        chain.append(GraphSpec(stretch_name(i, count), inputs, outputs, bounds[i], bounds[i + 1]))
    return tuple(chain)


METHOD_READS = ("received", "keys")  # what HoliTom and VisionZip read, beside tokens
HEAD_READS = ("head_scores", "global")  # what FastVID reads, when the checkpoint has SigLIP's pooling head


def method_outputs(has_head: bool) -> tuple[str, ...]:
    """The extra outputs of the last graph for the compared methods (FastVID, HoliTom, VisionZip)."""
    return METHOD_READS + (HEAD_READS if has_head else ())


def method_chain(chain: tuple[GraphSpec, ...], has_head: bool) -> tuple[GraphSpec, ...]:
    """`chain` with its last graph also giving method_outputs (ValueError when it runs no encoder layer: the last
    layer's attention and keys need that layer's input)."""
    tail = chain[-1]
    if tail.stop <= tail.start:
        raise ValueError(
            f"the last graph {tail.name} runs no encoder layer (the last merge layer is the encoder's last), so the "
            "last layer's attention and keys the compared methods read are not computed there: put the last merge "
            "layer before the encoder's last layer"
        )
    return (*chain[:-1], replace(tail, outputs=tail.outputs + method_outputs(has_head)))

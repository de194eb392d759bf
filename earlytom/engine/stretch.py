"""One graph of the encoder chain (earlytom.engine.layout) computed with a backbone's stages
(earlytom.models.backbone): the eager backend runs it, the exporter traces it."""

import torch
from torch import nn

from earlytom.engine.layout import HEAD_READS, METHOD_READS, GraphSpec


class Stretch(nn.Module):
    """The graph `spec` over `backbone`: inputs and outputs follow `spec.inputs` / `spec.outputs` in order."""

    def __init__(self, backbone: nn.Module, spec: GraphSpec) -> None:
        super().__init__()
        self.backbone, self.spec = backbone, spec

    def with_received(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers [start, stop) -> (hidden leaving them, attention received in layer stop - 1)."""
        b, last = self.backbone, self.spec.stop - 1
        hidden = b.run_layers(hidden, self.spec.start, last)
        return b.run_layers(hidden, last, last + 1), b.received(last, hidden)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, spec = self.backbone, self.spec
        hidden = b.embed(inputs[0]) if spec.inputs[0] == "pixels" else inputs[0]
        if spec.takes_attention:  # official tail: the last merge layer's merged attention is the score
            return b.project(b.run_layers(hidden, spec.start, spec.stop), inputs[1])
        if spec.final:  # paper tail: the attention received in the last layer is the score
            return b.project(*self.with_received(hidden))
        if spec.gives_attention:
            return self.with_received(hidden)
        return (b.run_layers(hidden, spec.start, spec.stop),)


class MethodTail(Stretch):
    """The last graph with the compared methods' inputs (method_chain's spec): tokens, scores as Stretch gives them,
    then received, keys (and head_scores, global) of the last encoder layer."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, spec = self.backbone, self.spec
        hidden = b.embed(inputs[0]) if spec.inputs[0] == "pixels" else inputs[0]
        last = spec.stop - 1
        hidden = b.run_layers(hidden, spec.start, last)  # entering the last layer
        received, keys = b.received(last, hidden), b.keys(last, hidden)
        hidden = b.run_layers(hidden, last, spec.stop)
        tokens, scores = b.project(hidden, inputs[1] if spec.takes_attention else received)
        outputs = (tokens, scores, b.pool(received[..., None])[..., 0], b.pool(keys))
        if HEAD_READS[0] not in spec.outputs:
            return outputs
        attention, pooled = b.head(hidden)
        return (*outputs, b.pool(attention[..., None])[..., 0], pooled)


def stretch_module(backbone, spec: GraphSpec) -> Stretch:
    """The module computing graph `spec` over `backbone`: MethodTail for a last graph with the methods' outputs."""
    return (MethodTail if METHOD_READS[0] in spec.outputs else Stretch)(backbone, spec)

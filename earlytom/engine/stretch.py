"""One graph of the encoder chain (earlytom.engine.layout) computed with a backbone's stages
(earlytom.models.backbone): the eager backend runs it, the exporter traces it."""

import torch
from torch import nn

from earlytom.engine.layout import GraphSpec


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

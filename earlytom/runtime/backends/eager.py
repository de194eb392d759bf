"""The eager backend: the transformers model itself, its encoder run as `Stretch` modules split wherever the
run options put the merge layers (nothing is fixed at load time). The oracle for every other backend."""

from dataclasses import replace

import torch

from earlytom.engine.layout import vision_chain
from earlytom.models.llava_onevision import LlavaOnevisionAdapter, Stretch
from earlytom.models.registry import LoadedModel
from earlytom.runtime.backends.base import RunOptions, Text, Visual
from earlytom.runtime.chain import encode_chain
from earlytom.runtime.decoder import decoder_for


class EagerBackend:
    name = "eager"

    def __init__(self, loaded: LoadedModel, defaults: RunOptions) -> None:
        self.adapter = LlavaOnevisionAdapter(loaded.model)
        self.text = Text(
            loaded.tokenizer, loaded.chat_template, loaded.preprocess, self.adapter.tokens_per_frame, loaded.notes
        )
        self.lm = loaded.model
        self.num_decoder_layers = loaded.model.config.text_config.num_hidden_layers
        self.defaults = self.check(defaults)

    def decoder(self, config):
        return decoder_for(self.lm, config)

    def check(self, options: RunOptions) -> RunOptions:
        """`options` with the model-dependent EarlyTom defaults filled in (merge layers), checked against the
        encoder's depth."""
        config = options.config.for_model(self.adapter.num_layers, self.num_decoder_layers)
        vision_chain(config.variant, config.merge_layers, self.adapter.num_layers)
        return replace(options, config=config)

    def encode(self, pixels: torch.Tensor, options: RunOptions, timer) -> Visual:
        c = options.config
        specs = vision_chain(c.variant, c.merge_layers, self.adapter.num_layers)
        stretches = [Stretch(self.adapter, spec) for spec in specs]
        return encode_chain(stretches, specs, pixels, options, timer, self.adapter.image_newline)

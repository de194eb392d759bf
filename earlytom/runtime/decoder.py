"""The decoder side of a request: text embeddings, prefill over spliced embeddings at the position ids the model
family's decoder side gives (earlytom.models.backbone.DecoderSide), greedy steps with transformers' KV cache at
the positions after the last one. Works with any transformers causal LM that accepts `inputs_embeds` and
`position_ids` (the family's model itself, or the language model saved in an engine directory). With
`inner_layer` set, prefill merges visual tokens inside the decoder (earlytom/runtime/inner_merge.py)."""

from collections.abc import Callable

import torch

from earlytom.runtime.backends.base import Visual
from earlytom.runtime.inner_merge import InnerMergeRunner


def decoder_for(lm, side, config) -> "Decoder":
    """The decoder over `lm` with the positions of the family's decoder `side` and the inner merge an
    EarlyTomConfig (resolved for the model) asks for."""
    if not config.inner_ratio:
        return Decoder(lm, side)
    return Decoder(lm, side, inner_layer=config.inner_layer, inner_ratio=config.inner_ratio)


class Decoder:
    """`inner_layer` None (the default): no inner merge. Otherwise the inner merge at that decoder layer,
    merging away `inner_ratio` (None: the released 0.5) of the visual tokens; after each `greedy`,
    `inner_counts` gives the visual embeddings (the backbone's suffix included) before and after it."""

    def __init__(self, lm, side, *, inner_layer: int | None = None, inner_ratio: float | None = None) -> None:
        self.lm, self.side = lm, side
        if inner_layer is None and inner_ratio is not None:
            raise ValueError(f"inner_ratio = {inner_ratio} needs inner_layer (the decoder layer to merge at)")
        self.inner = None if inner_layer is None else InnerMergeRunner(lm, inner_layer, inner_ratio)
        self.inner_counts: dict[str, int] | None = None

    @property
    def context_length(self) -> int:
        return self.lm.config.get_text_config().max_position_embeddings

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [S] -> text embeddings [S, D']."""
        return self.lm.get_input_embeddings()(input_ids.to(self.lm.device))

    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor):
        """embeds [S, D'] at position ids `positions` [..., S] -> (logits of the last position [V], KV cache)."""
        out = self.lm(inputs_embeds=embeds[None], position_ids=positions, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.past_key_values

    def step(self, token: int, cache, position: torch.Tensor):
        """One greedy decoding step at `position` [..., 1] from the cache: -> (logits [V], cache)."""
        ids = torch.tensor([[token]], device=self.lm.device)
        out = self.lm(input_ids=ids, position_ids=position, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.past_key_values

    def greedy(
        self,
        before: torch.Tensor,
        visual: Visual,
        after: torch.Tensor,
        *,
        max_new_tokens: int,
        eos: int,
        timer,
        on_token: Callable[[int], None] | None = None,
        seconds_per_unit: float | None = None,
    ) -> list[int]:
        """Greedy answer to the prompt `before` [P] ids + `visual` embeddings [K+s, D'] + `after` [Q] ids: up to
        max_new_tokens ids, ending with `eos` if it came. Times the "prefill" and "first_token" stages;
        `on_token` (if given) is called with each id as soon as it exists (streaming)."""
        with timer.stage("prefill"):
            layout = visual.layout(seconds_per_unit)
            positions = self.side.positions(len(before), layout, len(after)).to(self.lm.device)
            embeds = torch.cat([self.embed(before), visual.embeds, self.embed(after)])
            if self.inner is None:
                logits, cache = self.prefill(embeds, positions)
            else:
                span = slice(len(before), len(before) + layout.length)
                logits, cache, kept = self.inner.prefill(embeds, positions, span)
                self.inner_counts = {
                    "visual_embeds_before_inner": layout.length,
                    "visual_embeds_after_inner": len(kept.index),
                }
        step = self.step if self.inner is None else self.inner.step
        with timer.stage("first_token"):
            token = int(logits.argmax())
        generated = [token]
        if on_token is not None:
            on_token(token)
        position = positions[..., -1:]
        while token != eos and len(generated) < max_new_tokens:
            position = position + 1
            logits, cache = step(token, cache, position)
            token = int(logits.argmax())
            generated.append(token)
            if on_token is not None:
                on_token(token)
        return generated

"""The decoder side of a request: text embeddings, prefill over spliced embeddings at the position ids the model
family's decoder side gives (earlytom.models.backbone.DecoderSide), greedy steps with transformers' KV cache at
the positions after the last one. Works with any transformers causal LM that accepts `inputs_embeds` and
`position_ids` (the family's model itself, or the language model saved in an engine directory). With
`inner_layer` set, prefill merges visual tokens inside the decoder (earlytom/runtime/inner_merge.py)."""

from collections.abc import Callable

import torch

from earlytom.compress import default_inner_layer
from earlytom.models.backbone import VisualLayout
from earlytom.runtime.inner_merge import HoliTomMergeRunner, InnerMergeRunner, cache_argument
from earlytom.runtime.methods import HOLITOM_LLM_RATIO


def decoder_for(lm, side, config, method: str = "earlytom") -> "Decoder":
    """The decoder over `lm` with the positions of the family's decoder `side` and the inner merge an
    EarlyTomConfig (resolved for the model) asks for; for method "holitom", HoliTom's in-LLM merge at layer 18 of
    28 scaled to the decoder (default_inner_layer) merging away half the visual tokens, as its scripts run it."""
    if method == "holitom":
        layer = default_inner_layer(lm.config.get_text_config().num_hidden_layers)
        return Decoder(lm, side, inner=HoliTomMergeRunner(lm, layer, HOLITOM_LLM_RATIO))
    if not config.inner_ratio:
        return Decoder(lm, side)
    return Decoder(lm, side, inner=InnerMergeRunner(lm, config.inner_layer, config.inner_ratio))


def next_position(positions: torch.Tensor) -> torch.Tensor:
    """The position ids [..., 1] of the first token after a prompt at `positions` [..., S]: one past the largest id
    in every row (0..S-1 -> S; M-RoPE continues after the prompt's largest position, as its rope deltas do)."""
    return torch.full_like(positions[..., -1:], int(positions.max()) + 1)


class Decoder:
    """`side`: the family's decoder side (None: the model's own positions 0..S-1). `inner_layer` None (the
    default): no inner merge. Otherwise the inner merge at that decoder layer, merging away `inner_ratio` (None: the
    released 0.5) of the visual tokens; or `inner`, a runner over `lm` (InnerMergeRunner, HoliTomMergeRunner). After
    each `greedy`, `inner_counts` gives the visual embeddings (the backbone's suffix included) before and after it."""

    def __init__(
        self,
        lm,
        side=None,
        *,
        inner_layer: int | None = None,
        inner_ratio: float | None = None,
        inner: InnerMergeRunner | None = None,
    ) -> None:
        self.lm, self.side = lm, side
        self.cache_arg = cache_argument(lm)
        if inner_layer is None and inner_ratio is not None:
            raise ValueError(f"inner_ratio = {inner_ratio} needs inner_layer (the decoder layer to merge at)")
        if inner is None and inner_layer is not None:
            inner = InnerMergeRunner(lm, inner_layer, inner_ratio)
        self.inner = inner
        self.inner_counts: dict[str, int] | None = None

    @property
    def context_length(self) -> int:
        return self.lm.config.get_text_config().max_position_embeddings

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [S] -> text embeddings [S, D']."""
        return self.lm.get_input_embeddings()(input_ids.to(self.lm.device))

    def positions(self, before: int, visual: VisualLayout, after: int) -> torch.Tensor | None:
        """Position ids [..., S] of a prompt of `before` tokens, the visual embeddings of `visual`, `after` tokens
        (None: the model's own, 0..S-1)."""
        return None if self.side is None else self.side.positions(before, visual, after).to(self.lm.device)

    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor | None = None):
        """embeds [S, D'] at position ids `positions` [..., S] (None: 0..S-1) -> (logits of the last position [V],
        KV cache)."""
        out = self.lm(inputs_embeds=embeds[None], position_ids=positions, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.past_key_values

    def step(self, token: int, cache, position: torch.Tensor | None = None):
        """One greedy decoding step at `position` [..., 1] (None: after the cache's) -> (logits [V], cache)."""
        ids = torch.tensor([[token]], device=self.lm.device)
        out = self.lm(input_ids=ids, position_ids=position, use_cache=True, logits_to_keep=1, **{self.cache_arg: cache})
        return out.logits[0, -1], out.past_key_values

    def greedy(
        self,
        before: torch.Tensor,
        visual: torch.Tensor,
        after: torch.Tensor,
        *,
        max_new_tokens: int,
        eos: int,
        timer,
        on_token: Callable[[int], None] | None = None,
        positions: torch.Tensor | None = None,
    ) -> list[int]:
        """Greedy answer to the prompt `before` [P] ids + `visual` embeddings [K+s, D'] + `after` [Q] ids at
        `positions` [..., P+K+s+Q] (None: 0..S-1; see `positions`): up to max_new_tokens ids, ending with `eos` if
        it came. Times the "prefill" and "first_token" stages; `on_token` (if given) is called with each id as soon
        as it exists (streaming)."""
        with timer.stage("prefill"):
            embeds = torch.cat([self.embed(before), visual, self.embed(after)])
            if positions is None:
                positions = torch.arange(len(embeds), device=self.lm.device)[None]
            if self.inner is None:
                logits, cache = self.prefill(embeds, positions)
            else:
                span = slice(len(before), len(before) + len(visual))
                logits, cache, kept = self.inner.prefill(embeds, span, positions)
                self.inner_counts = {
                    "visual_embeds_before_inner": len(visual),
                    "visual_embeds_after_inner": len(kept.index),
                }
        step = self.step if self.inner is None else self.inner.step
        with timer.stage("first_token"):
            token = int(logits.argmax())
        generated = [token]
        if on_token is not None:
            on_token(token)
        position = next_position(positions)
        while token != eos and len(generated) < max_new_tokens:
            logits, cache = step(token, cache, position)
            position = position + 1
            token = int(logits.argmax())
            generated.append(token)
            if on_token is not None:
                on_token(token)
        return generated

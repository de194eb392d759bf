"""The decoder side of a request: text embeddings, prefill over spliced embeddings, greedy steps with
transformers' KV cache. Works with any transformers causal LM that accepts `inputs_embeds`
(LlavaOnevisionForConditionalGeneration itself, or the Qwen2ForCausalLM saved in an engine directory).
With `inner_layer` set, prefill merges visual tokens inside the decoder (earlytom/runtime/inner_merge.py)."""

from collections.abc import Callable

import torch

from earlytom.runtime.inner_merge import InnerMergeRunner


def decoder_for(lm, config) -> "Decoder":
    """The decoder over `lm` with the inner merge an EarlyTomConfig (resolved for the model) asks for."""
    if not config.inner_ratio:
        return Decoder(lm)
    return Decoder(lm, inner_layer=config.inner_layer, inner_ratio=config.inner_ratio)


class Decoder:
    """`inner_layer` None (the default): no inner merge. Otherwise the inner merge at that decoder layer,
    merging away `inner_ratio` (None: the released 0.5) of the visual tokens; after each `greedy`,
    `inner_counts` gives the visual embeddings (image_newline included) before and after it."""

    def __init__(self, lm, *, inner_layer: int | None = None, inner_ratio: float | None = None) -> None:
        self.lm = lm
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

    def prefill(self, embeds: torch.Tensor):
        """embeds [S, D'] -> (logits of the last position [V], KV cache)."""
        out = self.lm(inputs_embeds=embeds[None], use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.past_key_values

    def step(self, token: int, cache):
        """One greedy decoding step from the cache: -> (logits [V], cache)."""
        ids = torch.tensor([[token]], device=self.lm.device)
        out = self.lm(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
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
    ) -> list[int]:
        """Greedy answer to the prompt `before` [P] ids + `visual` [K+1, D'] embeddings + `after` [Q] ids: up to
        max_new_tokens ids, ending with `eos` if it came. Times the "prefill" and "first_token" stages;
        `on_token` (if given) is called with each id as soon as it exists (streaming)."""
        with timer.stage("prefill"):
            embeds = torch.cat([self.embed(before), visual, self.embed(after)])
            if self.inner is None:
                logits, cache = self.prefill(embeds)
            else:
                logits, cache, kept = self.inner.prefill(embeds, slice(len(before), len(before) + len(visual)))
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
        while token != eos and len(generated) < max_new_tokens:
            logits, cache = step(token, cache)
            token = int(logits.argmax())
            generated.append(token)
            if on_token is not None:
                on_token(token)
        return generated

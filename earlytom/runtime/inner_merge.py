"""The inner merge inside a transformers decoder (DESIGN.md section 4b), run layer by layer: Qwen2 (LLaVA-OneVision)
and Qwen2.5-VL's text model, or any decoder whose layers rotate queries and keys with their modeling module's
`apply_rotary_pos_emb` and the model's `rotary_emb` (1-D positions, or M-RoPE's [3, 1, S]).

Prefill runs layers [0, k) over the whole prompt, takes the attention the last prompt token gives the visual
tokens in layer k - 1, merges them (earlytom.compress.inner) and runs layers [k, L) over the shorter sequence
at the kept tokens' original positions (position ids [..., S] as the model family's decoder side gives them). The
DynamicCache then holds the full prompt in layers [0, k) and the shorter one in [k, L); decoding steps run layer
by layer too, at the positions after the last, each layer attending to everything in its own cache (the stock
forward sizes one mask for all layers, from layer 0's length).
"""

import inspect

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from earlytom.compress.config import DEFAULT_INNER_RATIO
from earlytom.compress.holitom import holitom_llm_merge
from earlytom.compress.inner import InnerMerged, check_inner_ratio, inner_merge


def cache_argument(module) -> str:
    """The name of the KV-cache argument of `module.forward`: `cache` in transformers 5.24 (where `past_key_values`
    is deprecated), `past_key_values` in earlier 5.x releases."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


class InnerMergeRunner:
    """Prefill with the inner merge at decoder layer `layer` (merging away `ratio` of the visual tokens), and
    the decoding steps after it, for a causal LM whose decoder (`get_decoder()`: layers, rotary_emb, norm) is
    transformers' Qwen2Model (Qwen2ForCausalLM, LlavaOnevisionForConditionalGeneration) or Qwen2_5_VLTextModel
    (Qwen2_5_VLForConditionalGeneration). The last query's rotation is its attention's own: the rotary embedding
    of the decoder at the given position ids and the `apply_rotary_pos_emb` of the attention's modeling module."""

    def __init__(self, lm, layer: int, ratio: float | None = None) -> None:
        self.lm = lm
        self.text = lm.get_decoder()
        config = self.text.config
        modeling = inspect.getmodule(type(self.text.layers[0].self_attn))
        if not all(hasattr(modeling, name) for name in ("apply_rotary_pos_emb", "repeat_kv")):
            raise ValueError(
                f"the inner merge needs a decoder whose attention rotates with its module's apply_rotary_pos_emb "
                f"(Qwen2, Qwen2.5-VL); this decoder is {config.model_type!r}"
            )
        self.rotate, self.repeat_kv = modeling.apply_rotary_pos_emb, modeling.repeat_kv
        if set(config.layer_types) != {"full_attention"}:
            raise ValueError("the inner merge needs full attention in every decoder layer (no sliding window)")
        layers = config.num_hidden_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= layers - 1:
            raise ValueError(
                f"inner_layer = {layer!r} is outside the valid range [1, {layers - 1}] for this {layers}-layer decoder"
            )
        self.layer = layer
        self.cache_arg = cache_argument(self.text.layers[0])
        self.ratio = DEFAULT_INNER_RATIO["official"] if ratio is None else ratio
        check_inner_ratio(self.ratio)

    def run_layers(self, hidden: torch.Tensor, position_ids: torch.Tensor, layers: range, cache) -> torch.Tensor:
        """hidden [1, S, D] at `position_ids` [..., S] through decoder layers `layers`, causal over these S tokens
        and whatever each layer already holds in `cache` (which they extend) -> hidden [1, S, D]."""
        rope = self.text.rotary_emb(hidden, position_ids)
        causal = hidden.shape[1] > 1  # a single query attends to everything its layer holds
        mask = (
            create_causal_mask(self.text.config, hidden, None, None) if causal else None
        )  # config, embeds, mask, cache
        text_positions = position_ids if position_ids.dim() == 2 else None  # M-RoPE rows: the stock forward passes none
        for i in layers:
            hidden = self.text.layers[i](
                hidden,
                attention_mask=mask,
                position_embeddings=rope,
                position_ids=text_positions,
                **{self.cache_arg: cache},
                use_cache=True,
            )
        return hidden

    def last_query_attention(self, hidden_in: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
        """Attention of the last token in layer k - 1 per head [H, S]: hidden_in [1, S, D] is that layer's input;
        its query comes from the layer's own norm, q projection and RoPE, its keys from the cache."""
        layer = self.text.layers[self.layer - 1]
        attn = layer.self_attn
        query = attn.q_proj(layer.input_layernorm(hidden_in[:, -1:]))  # [1, 1, H * hd]
        query = query.view(1, 1, -1, attn.head_dim).transpose(1, 2)  # [1, H, 1, hd]
        cos, sin = self.text.rotary_emb(hidden_in, position)
        query, _ = self.rotate(query, query, cos, sin)
        keys = self.repeat_kv(cache.layers[self.layer - 1].keys, attn.num_key_value_groups)  # [1, H, S, hd]
        scores = (query.float() @ keys.float().transpose(2, 3)) * attn.scaling  # [1, H, 1, S]
        return scores.softmax(dim=-1)[0, :, 0]

    def merge(self, hidden: torch.Tensor, attention: torch.Tensor, visual: slice) -> tuple[torch.Tensor, InnerMerged]:
        """hidden [1, S, D] leaving layer k - 1, the last token's attention there [H, S], the visual span -> (the
        kept rows [1, S', D] in position order, merged states in place; the kept visual tokens: index into the span,
        their states)."""
        kept = inner_merge(hidden[0, visual], attention.mean(dim=0)[visual], self.ratio)
        return torch.cat([hidden[:, : visual.start], kept.tokens[None], hidden[:, visual.stop :]], dim=1), kept

    def prefill(
        self, embeds: torch.Tensor, visual: slice, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, DynamicCache, InnerMerged]:
        """embeds [S, D] with the visual embeddings at `visual` (the backbone's suffix included), at position ids
        `positions` [..., S] (None: 0..S-1) -> (logits of the last position [V], cache, the kept visual tokens:
        index into the visual span, merged states at layer k)."""
        cache = DynamicCache(config=self.text.config)
        if positions is None:
            positions = torch.arange(embeds.shape[0], device=embeds.device)[None]
        hidden_in = self.run_layers(embeds[None], positions, range(self.layer - 1), cache)
        hidden = self.run_layers(hidden_in, positions, range(self.layer - 1, self.layer), cache)
        attention = self.last_query_attention(hidden_in, positions[..., -1:], cache)
        hidden, kept = self.merge(hidden, attention, visual)
        kept_positions = positions[..., visual][..., kept.index]
        positions = torch.cat([positions[..., : visual.start], kept_positions, positions[..., visual.stop :]], -1)
        hidden = self.run_layers(hidden, positions, range(self.layer, len(self.text.layers)), cache)
        return self.logits(hidden), cache, kept

    def step(self, token: int, cache, position: torch.Tensor | None = None) -> tuple[torch.Tensor, DynamicCache]:
        """One greedy step at `position` [..., 1] (None: the next 1-D position; layer 0 holds every position so far)
        -> (logits [V], cache)."""
        if position is None:
            position = torch.tensor([[cache.get_seq_length(0)]], device=self.lm.device)
        hidden = self.lm.get_input_embeddings()(torch.tensor([[token]], device=self.lm.device))
        return self.logits(self.run_layers(hidden, position, range(len(self.text.layers)), cache)), cache

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [1, S, D] after the last layer -> logits of the last position [V]."""
        return self.lm.get_output_embeddings()(self.text.norm(hidden[:, -1:]))[0, -1]


class HoliTomMergeRunner(InnerMergeRunner):
    """HoliTom's in-LLM merge (shared/BASELINES.md section 2) in place of EarlyTom's, on the same layer-by-layer
    prefill: at decoder layer `layer` (HOLITOM_k, 18 of 28), round(n * (1 - ratio)) of the n visual embeddings
    (newline included) are kept by the last token's head-mean attention in layer k - 1; every other one is folded
    into its most similar kept one (earlytom.compress.holitom_llm_merge); kept tokens keep their positions."""

    def merge(self, hidden: torch.Tensor, attention: torch.Tensor, visual: slice) -> tuple[torch.Tensor, InnerMerged]:
        length = visual.stop - visual.start
        merged = holitom_llm_merge(hidden, attention[None], image_start=visual.start, image_len=length, r=self.ratio)
        rows = merged.positions  # ascending: the text before, the kept span, the text after
        span = (rows >= visual.start) & (rows < visual.stop)
        return merged.hidden, InnerMerged(index=rows[span] - visual.start, tokens=merged.hidden[0, span])

"""The inner merge in Qwen2.5-VL's decoder (DESIGN.md sections 4b and 8): prefill and greedy steps at M-RoPE
position ids [3, 1, S] against a re-run of transformers' own decoder layers without a cache, the last query's
attention taken from transformers' eager attention weights; kept tokens keep their 3-D positions."""

import copy

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from earlytom.compress.inner import inner_merge, kept_count
from earlytom.models.backbone import VisualLayout
from earlytom.models.qwen2_5_vl import QwenProcessor, decoder_side, dims
from earlytom.runtime.decoder import Decoder
from earlytom.runtime.inner_merge import InnerMergeRunner
from earlytom.runtime.timing import StageTimer

LAYERS, WIDTH, VOCAB = 4, 64, 320
FRAME = (56, 84)  # 4 x 6 patches: 2 x 3 merged tokens per slice
SLICES, BEFORE, AFTER = 3, 5, 4


def qwen(attn: str = "sdpa") -> Qwen2_5_VLForConditionalGeneration:
    """A seeded random Qwen2.5-VL with a 4-layer decoder (weights large enough that attention is far from
    uniform)."""
    text = {
        "hidden_size": WIDTH,
        "intermediate_size": 128,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "max_position_embeddings": 512,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "initializer_range": 0.1,
    }
    vision = {"depth": 2, "hidden_size": 32, "out_hidden_size": WIDTH, "num_heads": 2, "fullatt_block_indexes": [1]}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, initializer_range=0.1)
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def lm():
    return qwen()


def prompt(lm, seed: int = 1):
    """before [5] ids, visual [18, D] embeddings (3 slices of 2 x 3 tokens), after [4] ids, and their M-RoPE position
    ids [3, 1, 27] from the family's decoder side (slices 2 s apart)."""
    g = torch.Generator().manual_seed(seed)
    every = torch.arange(SLICES * 6)
    layout = VisualLayout(18, every // 6, every % 6, torch.arange(SLICES)[:, None].expand(-1, 2), SLICES, 2.0)
    side = decoder_side(lm.config, dims(lm.config, QwenProcessor(frame_size=FRAME)))
    return (
        torch.randint(0, VOCAB, (BEFORE,), generator=g),
        torch.randn(18, WIDTH, generator=g),
        torch.randint(0, VOCAB, (AFTER,), generator=g),
        side.positions(BEFORE, layout, AFTER),
    )


def causal_run(lm, hidden: torch.Tensor, positions: torch.Tensor, layers) -> torch.Tensor:
    """hidden [1, S, D] through transformers' decoder `layers` without a cache: causal over these S tokens, M-RoPE
    at `positions` [3, 1, S]."""
    size = hidden.shape[1]
    mask = torch.full((size, size), float("-inf")).triu(1)[None, None]
    rope = lm.get_decoder().rotary_emb(hidden, positions)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rope)
    return hidden


def reference_logits(lm, embeds, positions, visual: slice, k: int, ratio: float, attention):
    """Logits of the last position of `embeds` [S, D] at `positions` [3, 1, S], re-running the decoder: layers < k
    over every token, the visual tokens merged by `attention`, layers >= k over the kept tokens only, at their
    original 3-D positions."""
    text = lm.get_decoder()
    hidden = causal_run(lm, embeds[None], positions, text.layers[:k])
    kept = inner_merge(hidden[0, visual], attention, ratio)
    keep = torch.cat([torch.arange(visual.start), visual.start + kept.index, torch.arange(visual.stop, len(embeds))])
    hidden = hidden[:, keep].clone()
    hidden[0, visual.start : visual.start + len(kept.index)] = kept.tokens
    hidden = causal_run(lm, hidden, positions[..., keep], text.layers[k:])
    return lm.get_output_embeddings()(text.norm(hidden))[0, -1], kept.index


@pytest.mark.parametrize(("k", "ratio"), [(1, 0.5), (2, 0.3), (3, 0.9)])
def test_greedy_equals_rerun_at_three_row_positions(lm, k, ratio):
    eager = copy.deepcopy(lm)
    eager.set_attn_implementation("eager")
    before, visual, after, positions = prompt(lm)
    span = slice(BEFORE, BEFORE + 18)
    decoder, runner = Decoder(lm, inner_layer=k, inner_ratio=ratio), InnerMergeRunner(lm, k, ratio)
    with torch.inference_mode():
        tokens = decoder.greedy(
            before, visual, after, max_new_tokens=4, eos=-1, timer=StageTimer(), positions=positions
        )
        embeds = torch.cat([decoder.embed(before), visual, decoder.embed(after)])
        logits, cache, kept = runner.prefill(embeds, span, positions)
        weights = eager(inputs_embeds=embeds[None], position_ids=positions, output_attentions=True).attentions
        attention = weights[k - 1][0, :, -1, span].mean(dim=0)  # transformers' own M-RoPE attention
        start = int(positions.max()) + 1  # generate's rope delta: decoding continues after the largest position
        for step, token in enumerate([None, *tokens[:-1]]):
            if token is not None:
                position = torch.full((3, 1, 1), start + step - 1)
                logits, cache = runner.step(token, cache, position)
                embeds = torch.cat([embeds, decoder.embed(torch.tensor([token]))])
                positions = torch.cat([positions, position], dim=-1)
            expected, index = reference_logits(lm, embeds, positions, span, k, ratio, attention)
            assert torch.equal(index, kept.index)
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
            assert int(expected.argmax()) == tokens[step]
    assert len(kept.index) == kept_count(18, ratio) < 18
    assert decoder.inner_counts == {"visual_embeds_before_inner": 18, "visual_embeds_after_inner": len(kept.index)}


def test_the_merge_changes_the_answer_and_positions_matter(lm):
    before, visual, after, positions = prompt(lm)
    assert not torch.equal(positions[0], positions[1]) and not torch.equal(positions[1], positions[2])
    span = slice(BEFORE, BEFORE + 18)
    runner = InnerMergeRunner(lm, 2, 0.5)
    with torch.inference_mode():
        embeds = torch.cat([lm.get_input_embeddings()(before), visual, lm.get_input_embeddings()(after)])
        merged = runner.prefill(embeds, span, positions)[0]
        plain = Decoder(lm).prefill(embeds, positions)[0]
        flat = runner.prefill(embeds, span, torch.arange(len(embeds))[None])[0]  # 1-D positions instead
    assert (merged - plain).abs().max() > 1e-2
    assert (merged - flat).abs().max() > 1e-3

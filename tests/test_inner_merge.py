"""The inner merge (DESIGN.md section 4b): the token math on hand-computed cases and against a brute-force
reference, and the layer-by-layer decoder against a re-run of the whole model without a cache."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2Config, Qwen2ForCausalLM

from earlytom.compress.inner import inner_merge, kept_count
from earlytom.runtime.decoder import Decoder
from earlytom.runtime.inner_merge import InnerMergeRunner
from earlytom.runtime.timing import StageTimer

LAYERS, WIDTH, VOCAB = 4, 64, 320


def qwen2(attn: str = "sdpa", **overrides) -> Qwen2ForCausalLM:
    """A seeded random 4-layer Qwen2 (weights large enough that attention and logits are far from uniform)."""
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.1,
        **overrides,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def lm():
    return qwen2()


def prompt(seed: int = 1):
    """before [5] ids, visual [21, D] embeddings, after [4] ids: the visual span is positions 5..25."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, VOCAB, (5,), generator=g),
        torch.randn(21, WIDTH, generator=g),
        torch.randint(0, VOCAB, (4,), generator=g),
    )


# --- the token math -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "ratio", "kept"),
    [(5, 0.5, 2), (7, 0.5, 4), (21, 0.5, 10), (10, 0.0, 10), (10, 0.25, 8), (3, 0.99, 1), (1, 0.5, 1), (0, 0.5, 0)],
)
def test_kept_count_is_python_round_with_at_least_one(n, ratio, kept):
    """round(n * (1 - ratio)) as released (halves to even: 2.5 -> 2, 3.5 -> 4), never 0 while tokens exist."""
    assert kept_count(n, ratio) == kept


@pytest.mark.parametrize("ratio", [1.0, -0.1, float("nan"), 1.5])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ValueError, match=r"inner_ratio = .* outside the valid range \[0, 1\)"):
        kept_count(4, ratio)


def test_least_attended_average_into_most_similar_kept():
    tokens = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    out = inner_merge(tokens, torch.tensor([0.1, 0.4, 0.2, 0.3]), 0.5)
    assert out.index.tolist() == [1, 3]
    torch.testing.assert_close(out.tokens, torch.stack([(tokens[1] + tokens[0]) / 2, (tokens[3] + tokens[2]) / 2]))


def test_attention_ties_keep_the_lower_index():
    assert inner_merge(torch.eye(4), torch.tensor([0.5, 0.5, 0.5, 0.1]), 0.5).index.tolist() == [0, 1]


@pytest.mark.parametrize(("attention", "winner"), [([0.3, 0.9, 0.1], 1), ([0.9, 0.3, 0.1], 0), ([0.5, 0.5, 0.1], 0)])
def test_similarity_ties_go_to_the_more_attended_then_lower_index(attention, winner):
    """Token 2 is equally similar to both kept tokens: it joins the better ranked one, as the released code's
    argmax over the top-k in rank order does."""
    tokens = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = inner_merge(tokens, torch.tensor(attention), 0.4)  # keeps round(1.8) = 2
    expected = tokens[:2].clone()
    expected[winner] = (tokens[winner] + tokens[2]) / 2
    torch.testing.assert_close(out.tokens, expected)


def test_repeated_merges_average_in_ascending_position_order():
    """Both others join the one kept token: ((kept + t0) / 2 + t2) / 2, not the other order."""
    tokens = torch.tensor([[2.0, 0.0], [8.0, 0.0], [4.0, 0.0]])
    out = inner_merge(tokens, torch.tensor([0.1, 0.8, 0.1]), 0.7)  # keeps round(0.9) = 1
    assert out.index.tolist() == [1]
    torch.testing.assert_close(out.tokens, torch.tensor([[4.5, 0.0]]))


def test_similarities_are_measured_once_before_merging():
    """Token 3 (at 30 degrees) is closer to kept b (53.1 degrees) than to kept a (0 degrees) before token 2 moves
    b to 71.6 degrees, and closer to a after: it must still join b."""
    a, b, t2, t3 = [1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.75**0.5, 0.5]
    tokens = torch.tensor([a, b, t2, t3])
    out = inner_merge(tokens, torch.tensor([0.9, 0.8, 0.1, 0.1]), 0.5)
    torch.testing.assert_close(out.tokens, torch.stack([tokens[0], ((tokens[1] + tokens[2]) / 2 + tokens[3]) / 2]))


def test_zero_ratio_keeps_every_token_unchanged():
    tokens = torch.randn(6, 3)
    out = inner_merge(tokens, torch.rand(6), 0.0)
    assert out.index.tolist() == list(range(6))
    assert torch.equal(out.tokens, tokens)


def test_no_visual_tokens_merge_to_nothing():
    out = inner_merge(torch.zeros(0, 3), torch.zeros(0), 0.5)
    assert out.index.tolist() == [] and out.tokens.shape == (0, 3)


def test_mismatched_attention_is_refused():
    with pytest.raises(ValueError, match="attention has 3 entries for 4 tokens"):
        inner_merge(torch.randn(4, 2), torch.rand(3), 0.5)


def brute_force(tokens: list[list[float]], attention: list[float], ratio: float):
    """The section 4b prose in plain Python: keep the top round(n (1 - ratio)) by attention, then each other
    token in position order joins the kept one of highest cosine (measured before any merge)."""
    n = len(tokens)
    ranked = sorted(range(n), key=lambda i: (-attention[i], i))[: max(1, round(n * (1 - ratio)))]
    norm = [sum(x * x for x in t) ** 0.5 for t in tokens]

    def cosine(i, j):
        return sum(x * y for x, y in zip(tokens[i], tokens[j], strict=True)) / (norm[i] * norm[j])

    merged = {j: list(tokens[j]) for j in ranked}
    targets = {i: max(ranked, key=lambda j: cosine(i, j)) for i in range(n) if i not in merged}
    for i in sorted(targets):
        merged[targets[i]] = [(x + y) / 2 for x, y in zip(merged[targets[i]], tokens[i], strict=True)]
    return sorted(merged), [merged[j] for j in sorted(merged)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.floats(0.0, 0.95), st.integers(0, 2**31))
def test_inner_merge_matches_brute_force(n, width, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    tokens, attention = torch.randn(n, width, generator=g, dtype=torch.float64), torch.rand(n, generator=g)
    out = inner_merge(tokens, attention, ratio)
    index, merged = brute_force(tokens.tolist(), attention.tolist(), ratio)
    assert out.index.tolist() == index
    torch.testing.assert_close(out.tokens, torch.tensor(merged, dtype=torch.float64))


# --- the decoder ------------------------------------------------------------------------------------------------


def causal_run(lm, hidden: torch.Tensor, positions: torch.Tensor, layers) -> torch.Tensor:
    """hidden [1, S, D] through `layers` without a cache: an explicit additive causal mask over the S tokens,
    RoPE at `positions` [S]."""
    size = hidden.shape[1]
    mask = torch.full((size, size), float("-inf")).triu(1)[None, None]
    rope = lm.get_decoder().rotary_emb(hidden, positions[None])
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rope)
    return hidden


def last_prompt_attention(eager_lm, prompt_embeds: torch.Tensor, visual: slice, k: int) -> torch.Tensor:
    """What the last prompt token gives the visual tokens in layer k - 1, mean over heads [n], from transformers'
    own eager attention weights over the whole prompt [S, D]."""
    weights = eager_lm(inputs_embeds=prompt_embeds[None], output_attentions=True).attentions[k - 1]
    return weights[0, :, -1, visual].mean(dim=0)


def reference_logits(lm, embeds: torch.Tensor, visual: slice, k: int, ratio: float, attention: torch.Tensor):
    """Logits of the last position of `embeds` [S, D] (the prompt, then generated tokens), re-running the whole
    model: layers < k over every token, the visual tokens merged by `attention`, layers >= k over the kept
    tokens only, at their original positions."""
    text = lm.get_decoder()
    positions = torch.arange(embeds.shape[0])
    hidden = causal_run(lm, embeds[None], positions, text.layers[:k])
    kept = inner_merge(hidden[0, visual], attention, ratio)
    keep = torch.cat([positions[: visual.start], visual.start + kept.index, positions[visual.stop :]])
    hidden = hidden[:, keep].clone()
    hidden[0, visual.start : visual.start + len(kept.index)] = kept.tokens
    hidden = causal_run(lm, hidden, keep, text.layers[k:])
    return lm.get_output_embeddings()(text.norm(hidden))[0, -1], kept.index


def eager_twin(lm):
    """The same model with transformers' eager attention, which returns its attention weights."""
    twin = copy.deepcopy(lm)
    twin.set_attn_implementation("eager")
    return twin


@pytest.mark.parametrize(("attn", "k", "ratio"), [("sdpa", 1, 0.5), ("eager", 2, 0.9), ("sdpa", 3, 0.3)])
def test_greedy_equals_rerun_with_explicit_keep_list(attn, k, ratio):
    lm = qwen2(attn)
    eager = eager_twin(lm)
    before, visual, after = prompt()
    span = slice(len(before), len(before) + len(visual))
    decoder, runner = Decoder(lm, inner_layer=k, inner_ratio=ratio), InnerMergeRunner(lm, k, ratio)
    with torch.inference_mode():
        tokens = decoder.greedy(before, visual, after, max_new_tokens=4, eos=-1, timer=StageTimer())
        embeds = torch.cat([decoder.embed(before), visual, decoder.embed(after)])
        logits, cache, kept = runner.prefill(embeds, span)
        plain = Decoder(lm).prefill(embeds)[0]
        attention = last_prompt_attention(eager, embeds, span, k)
        for step, token in enumerate([None, *tokens[:-1]]):
            if token is not None:
                logits, cache = runner.step(token, cache)
                embeds = torch.cat([embeds, decoder.embed(torch.tensor([token]))])
            expected, index = reference_logits(lm, embeds, span, k, ratio, attention)
            assert torch.equal(index, kept.index)
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
            assert int(expected.argmax()) == tokens[step]
    assert len(kept.index) == kept_count(21, ratio) < 21
    assert (plain - runner.prefill(embeds[:30], span)[0]).abs().max() > 1e-2, "the merge must change the logits"
    lengths = [layer.keys.shape[-2] for layer in cache.layers]
    assert lengths == [33] * k + [33 - 21 + len(kept.index)] * (LAYERS - k)
    assert decoder.inner_counts == {"visual_embeds_before_inner": 21, "visual_embeds_after_inner": len(kept.index)}


def test_llava_onevision_decoder_merges_too(tiny):
    """The tiny LLaVA-OV (2-layer Qwen2 inside): inner merge at its only valid layer, against the re-run."""
    lm = tiny.model
    eager = eager_twin(lm)
    before, visual, after = prompt()
    decoder = Decoder(lm, inner_layer=1)
    with torch.inference_mode():
        tokens = decoder.greedy(before, visual, after, max_new_tokens=3, eos=-1, timer=StageTimer())
        embeds = torch.cat([decoder.embed(before), visual, decoder.embed(after)])
        attention = last_prompt_attention(eager, embeds, slice(5, 26), 1)
        expected, index = reference_logits(lm, embeds, slice(5, 26), 1, 0.5, attention)
    assert int(expected.argmax()) == tokens[0]
    assert decoder.inner_counts["visual_embeds_after_inner"] == len(index) == 10


def test_zero_ratio_answers_like_no_inner_merge(lm):
    before, visual, after = prompt()
    with torch.inference_mode():
        plain = Decoder(lm).greedy(before, visual, after, max_new_tokens=8, eos=-1, timer=StageTimer())
        zero = Decoder(lm, inner_layer=2, inner_ratio=0.0)
        assert zero.greedy(before, visual, after, max_new_tokens=8, eos=-1, timer=StageTimer()) == plain
    assert zero.inner_counts == {"visual_embeds_before_inner": 21, "visual_embeds_after_inner": 21}


def test_no_inner_layer_is_the_stock_cached_forward_bit_for_bit(lm):
    """inner_layer None: prefill and steps are transformers' own forward with its cache, exactly as before."""
    before, visual, after = prompt()
    decoder = Decoder(lm, inner_layer=None, inner_ratio=None)
    with torch.inference_mode():
        tokens = decoder.greedy(before, visual, after, max_new_tokens=5, eos=-1, timer=StageTimer())
        embeds = torch.cat([lm.get_input_embeddings()(before), visual, lm.get_input_embeddings()(after)])
        out = lm(inputs_embeds=embeds[None], use_cache=True, logits_to_keep=1)
        expected = [int(out.logits[0, -1].argmax())]
        for _ in range(4):
            out = lm(input_ids=torch.tensor([expected[-1:]]), past_key_values=out.past_key_values, use_cache=True)
            expected.append(int(out.logits[0, -1].argmax()))
    assert tokens == expected
    assert decoder.inner is None and decoder.inner_counts is None


def test_streams_every_id_and_stops_at_eos(lm):
    before, visual, after = prompt()
    decoder = Decoder(lm, inner_layer=2, inner_ratio=0.5)
    timer = StageTimer()
    with torch.inference_mode():
        full = decoder.greedy(before, visual, after, max_new_tokens=6, eos=-1, timer=StageTimer())
        streamed = []
        tokens = decoder.greedy(
            before, visual, after, max_new_tokens=6, eos=full[2], timer=timer, on_token=streamed.append
        )
    assert streamed == tokens == full[: full.index(full[2]) + 1]
    assert set(timer.ms) == {"prefill", "first_token"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inner_layer": 0}, r"inner_layer = 0 is outside the valid range \[1, 3\] for this 4-layer decoder"),
        ({"inner_layer": 4}, r"inner_layer = 4 is outside the valid range \[1, 3\]"),
        ({"inner_layer": 2.0}, r"inner_layer = 2.0 is outside"),
        ({"inner_layer": True}, r"inner_layer = True is outside"),
        ({"inner_layer": 2, "inner_ratio": 1.0}, r"inner_ratio = 1.0 is outside the valid range \[0, 1\)"),
        ({"inner_ratio": 0.5}, "inner_ratio = 0.5 needs inner_layer"),
    ],
)
def test_bad_settings_are_refused(lm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Decoder(lm, **kwargs)


def test_default_ratio_is_the_released_half(lm):
    assert Decoder(lm, inner_layer=2).inner.ratio == 0.5


def test_sliding_window_decoders_are_refused():
    lm = qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=2)
    with pytest.raises(ValueError, match="full attention in every decoder layer"):
        Decoder(lm, inner_layer=2)

"""The compared methods (FastVID, HoliTom, VisionZip) as run methods of the pipeline, on the tiny LLaVA-OV model:
their inputs against transformers' own SigLIP outputs, eager against ONNX Runtime, the same request twice, FastVID
refused without SigLIP's pooling head, FastVID's position gaps and HoliTom's in-LLM merge in the decoder."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlavaOnevisionForConditionalGeneration

from earlytom.cli import main as earlytom_main
from earlytom.compress import EarlyTomConfig, holitom_llm_merge
from earlytom.engine.layout import method_chain, vision_chain
from earlytom.engine.stretch import MethodTail
from earlytom.engine_builder.build import BuildError, build
from earlytom.models.backbone import VisualLayout
from earlytom.models.registry import load_model, packaged_config
from earlytom.runtime.backends.base import UnsupportedOption
from earlytom.runtime.methods import original_positions
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames
from earlytom.runtime.timing import StageTimer

FRAMES = 8  # FastVID's DySeg needs T >= c = 8
RATIO = 0.25  # the tiny model's 25 tokens per frame: FastVID's C = int(6 * 0.4) = 2 > 0
PAPER = EarlyTomConfig(variant="paper", merge_layers=(0,), retain_ratio=RATIO)  # the tail runs layers 1..3


@pytest.fixture(scope="module")
def head_model(tmp_path_factory):
    """The tiny model with SigLIP's attention-pooling head (vision_use_head), saved and loaded as a checkpoint."""
    config = packaged_config("tiny")
    config.vision_config.vision_use_head = True
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiny_head")
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(path)
    return load_model(str(path))


def engine_with_method_outputs(model, out):
    """An onnxruntime engine directory whose last graph gives the methods' inputs (build_engine --compared-methods)."""
    build(model, out, config=PAPER, frames=FRAMES, progress=False, compared_methods=True)
    return out


@pytest.fixture(scope="module")
def engines(tiny, head_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("method_engines")
    return {
        "tiny": engine_with_method_outputs(tiny, root / "tiny"),
        "head": engine_with_method_outputs(head_model, root / "head"),
    }


def pooled(x: torch.Tensor) -> torch.Tensor:
    """x [N, 81, C] on the 9 x 9 grid -> [N, 25, C], LLaVA-OV's bilinear pool written out with F.interpolate."""
    maps = x.reshape(x.shape[0], 9, 9, -1).permute(0, 3, 1, 2)
    return F.interpolate(maps, size=[5, 5], mode="bilinear").permute(0, 2, 3, 1).reshape(x.shape[0], 25, -1)


def test_method_inputs_are_transformers_own(head_model):
    """received = the last layer's attention maps from transformers (output_attentions), mean over heads and
    queries, pooled; global = the tower's own pooler_output; head_scores = the probe's softmax written out from the
    head's in-projection, mean over heads, pooled."""
    backbone = head_model.backbone()
    n = backbone.dims.encoder_layers
    spec = method_chain(vision_chain("paper", (0,), n), True)[-1]
    pixels = head_model.processor(torch.from_numpy(moving_square_frames(3)))
    tower = copy.deepcopy(head_model.model.model.vision_tower)
    tower.set_attn_implementation("eager")
    with torch.inference_mode():
        out = tower(pixels, output_attentions=True, output_hidden_states=True)
        entering_tail = out.hidden_states[1]  # after layer 0
        tokens, scores, received, keys, head_scores, pooled_global = MethodTail(backbone, spec)(entering_tail)
        maps = out.attentions[n - 1].mean(dim=(1, 2))  # [N, 81]
        torch.testing.assert_close(received, pooled(maps[..., None])[..., 0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(scores, received)  # the paper tail's scores are the same maps
        torch.testing.assert_close(pooled_global, out.pooler_output, rtol=1e-5, atol=1e-6)
        head = tower.head
        x = tower.post_layernorm(out.hidden_states[n])
        D, H = x.shape[-1], head.attention.num_heads
        wq, wk, _ = head.attention.in_proj_weight.split(D)
        bq, bk, _ = head.attention.in_proj_bias.split(D)
        q = (head.probe[0] @ wq.T + bq).view(1, H, D // H)  # [1, H, d]
        k = (x @ wk.T + bk).view(x.shape[0], -1, H, D // H)  # [N, 81, H, d]
        probs = torch.einsum("qhd,nlhd->nhl", q, k).div(math.sqrt(D // H)).softmax(dim=-1).mean(dim=1)
        torch.testing.assert_close(head_scores, pooled(probs[..., None])[..., 0], rtol=1e-5, atol=1e-7)
        layer = tower.encoder.layers[n - 1]
        expected_keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[n - 1]))
        expected_keys = expected_keys.view(3, 81, H, -1).mean(dim=2)
        torch.testing.assert_close(keys, pooled(expected_keys), rtol=1e-5, atol=1e-6)
    assert tokens.shape == (3, 25, head_model.model.config.text_config.hidden_size)


@pytest.mark.parametrize("method", ["fastvid", "holitom", "visionzip"])
def test_eager_and_onnxruntime_select_and_answer_alike(method, tiny, head_model, engines):
    model, engine = (head_model, engines["head"]) if method == "fastvid" else (tiny, engines["tiny"])
    frames = moving_square_frames(FRAMES, cut_at=4)
    eager = Pipeline.from_model(model, method=method, num_frames=FRAMES, config=PAPER)
    ort = Pipeline.from_engine_dir(engine, method=method, num_frames=FRAMES, retain_ratio=RATIO)
    a, b = eager.generate(frames, "What changes?", 5), ort.generate(frames, "What changes?", 5)
    assert torch.equal(a.visual.frame, b.visual.frame) and torch.equal(a.visual.index, b.visual.index)
    scale = a.visual.embeds.abs().max()
    assert float((a.visual.embeds - b.visual.embeds).abs().max() / scale) < 1e-4
    assert a.token_ids == b.token_ids and a.counts == b.counts
    assert 0 < a.counts["visual_tokens"] < FRAMES * 25


@pytest.mark.parametrize("method", ["fastvid", "holitom"])
def test_the_same_request_twice_gives_the_same_answer(method, tiny, head_model):
    """The density jitter comes from a generator seeded per request, whatever the global RNG does in between."""
    model = head_model if method == "fastvid" else tiny
    pipe = Pipeline.from_model(model, method=method, num_frames=FRAMES, config=PAPER)
    frames = moving_square_frames(FRAMES)
    first = pipe.generate(frames, "Where is the square?", 4)
    torch.rand(1000)
    second = pipe.generate(frames, "Where is the square?", 4)
    assert torch.equal(first.visual.embeds, second.visual.embeds) and first.token_ids == second.token_ids


def test_fastvid_refused_without_the_pooling_head(tiny, engines, capsys):
    with pytest.raises(UnsupportedOption, match="vision_use_head False"):
        Pipeline.from_model(tiny, method="fastvid", num_frames=FRAMES, config=PAPER)
    with pytest.raises(UnsupportedOption, match="attention-pooling head"):
        Pipeline.from_engine_dir(engines["tiny"], method="fastvid", num_frames=FRAMES)
    code = earlytom_main(["run", "--video", "none.mp4", "--prompt", "x", "--method", "fastvid", "--frames", "8"])
    assert code == 2 and "vision_use_head False" in capsys.readouterr().err


def test_compared_methods_refused_on_an_engine_without_their_outputs(tiny, tmp_path):
    """An engine built without --compared-methods names the rebuild; the official tiny chain merges after the
    encoder's last layer, so its last graph runs no layer to read and the build itself is refused."""
    engine = tmp_path / "paper"
    build(tiny, engine, config=PAPER, frames=FRAMES, progress=False)
    with pytest.raises(UnsupportedOption, match="--compared-methods"):
        Pipeline.from_engine_dir(engine, method="holitom")
    with pytest.raises(BuildError, match="runs no encoder layer"):
        build(tiny, tmp_path / "official", frames=FRAMES, progress=False, compared_methods=True)
    assert not (tmp_path / "official").exists()


def test_fastvid_positions_keep_the_gaps():
    """3 text tokens, 2 units of 4 tokens (kept: unit 0 token 2, unit 1 token 0), the newline, 2 text tokens: the
    full prompt would put unit 0 at 3..6, unit 1 at 7..10, the newline at 11."""
    layout = VisualLayout(3, torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([[0, 0], [1, 1]]), 2)
    assert original_positions(3, layout, 2, 4).tolist() == [[0, 1, 2, 5, 7, 11, 12, 13]]


def test_fastvid_decodes_at_the_original_positions(head_model):
    """FastVID's prefill equals the decoder run at the hand-made gapped positions, and differs from 0..S-1."""
    pipe = Pipeline.from_model(head_model, method="fastvid", num_frames=FRAMES, config=PAPER)
    result = pipe.generate(moving_square_frames(FRAMES), "x", 1)
    visual = result.visual
    before, after = pipe.prompt_ids("x")
    P, T = len(before), 25
    expected = [*range(P), *(P + f * T + i for f, i in zip(visual.frame.tolist(), visual.index.tolist(), strict=True))]
    expected += list(range(P + FRAMES * T, P + FRAMES * T + 1 + len(after)))
    decoder = pipe.decoder
    with torch.inference_mode():
        embeds = torch.cat([decoder.embed(before), visual.embeds, decoder.embed(after)])
        gapped, _ = decoder.prefill(embeds, torch.tensor([expected]))
        plain, _ = decoder.prefill(embeds)
    assert result.token_ids[0] == int(gapped.argmax())
    assert (gapped - plain).abs().max() > 1e-4


def test_holitom_merges_inside_the_decoder(tiny):
    """HoliTom's in-LLM merge at layer 18 of 28 scaled to the tiny 2-layer decoder (layer 1): layer 0 caches the
    whole prompt, layer 1 the text and round(n / 2) of the n visual embeddings (newline included)."""
    pipe = Pipeline.from_model(tiny, method="holitom", num_frames=FRAMES, config=PAPER)
    result = pipe.generate(moving_square_frames(FRAMES), "What moves?", 3)
    n = result.counts["visual_tokens"] + 1
    assert result.counts["visual_embeds_before_inner"] == n
    assert result.counts["visual_embeds_after_inner"] == round(n * 0.5)
    decoder = pipe.decoder
    before, after = pipe.prompt_ids("What moves?")
    with torch.inference_mode():
        embeds = torch.cat([decoder.embed(before), result.visual.embeds, decoder.embed(after)])
        span = slice(len(before), len(before) + n)
        _, cache, kept = decoder.inner.prefill(embeds, span)
    S = len(embeds)
    assert [layer.keys.shape[-2] for layer in cache.layers] == [S, S - n + round(n * 0.5)]
    assert len(kept.index) == round(n * 0.5) and torch.equal(kept.index, kept.index.sort().values)


def test_method_option_timer_stages(tiny):
    """A compared method is timed like the others: its selection in token_select."""
    pipe = Pipeline.from_model(tiny, method="visionzip", num_frames=FRAMES, config=PAPER)
    timer = StageTimer()
    pixels = tiny.processor(torch.from_numpy(moving_square_frames(FRAMES)))
    with torch.inference_mode():
        visual = pipe.backend.encode([pixels], pipe.options, timer)
    assert "token_select" in timer.breakdown()
    assert len(visual.frame) == FRAMES * 6  # round(25 * 0.25) = 6 per frame


def test_holitom_keeps_what_transformers_own_attention_picks(tiny):
    """The runner's kept visual tokens equal holitom_llm_merge on transformers' own layer-0 output and layer-0
    attention probabilities of the last token (eager attention, output_attentions)."""
    pipe = Pipeline.from_model(tiny, method="holitom", num_frames=FRAMES, config=PAPER)
    result = pipe.generate(moving_square_frames(FRAMES, cut_at=4), "What moves?", 1)
    decoder = pipe.decoder
    before, after = pipe.prompt_ids("What moves?")
    text = copy.deepcopy(tiny.model.model.language_model)
    text.set_attn_implementation("eager")
    n = len(result.visual.embeds)
    with torch.inference_mode():
        embeds = torch.cat([decoder.embed(before), result.visual.embeds, decoder.embed(after)])
        _, _, kept = decoder.inner.prefill(embeds, slice(len(before), len(before) + n))
        out = text(inputs_embeds=embeds[None], output_attentions=True, output_hidden_states=True)
        expected = holitom_llm_merge(
            out.hidden_states[1], out.attentions[0][:, :, -1], image_start=len(before), image_len=n, r=0.5
        )
    in_span = (expected.positions >= len(before)) & (expected.positions < len(before) + n)
    assert torch.equal(kept.index, expected.positions[in_span] - len(before))
    torch.testing.assert_close(kept.tokens, expected.hidden[0, in_span], rtol=1e-5, atol=1e-6)

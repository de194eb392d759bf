"""Qwen2.5-VL's decoder on TensorRT-LLM's Qwen2-VL path: the config TensorRT-LLM reads, the M-RoPE rotary table
(against transformers' own Qwen2.5-VL rotary embedding), the position delta (by hand), and the TensorRT-LLM calls
(skipped without tensorrt_llm, or without TensorRT and a GPU)."""

import importlib.util
import json

import pytest
import torch
from transformers import AutoConfig

from earlytom.engine_builder.tensorrt import trtllm_hf_config
from earlytom.models.registry import load_model, packaged_config
from earlytom.runtime.backends.tensorrt import Mrope, mrope_delta, mrope_params, mrope_table

TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None


@pytest.fixture(scope="module")
def qwen():
    return load_model("qwen-tiny")


@pytest.fixture(scope="module")
def saved(qwen, tmp_path_factory):
    directory = tmp_path_factory.mktemp("decoder")
    qwen.family.save_decoder(qwen.model, directory)
    return json.loads((directory / "config.json").read_text())


def test_the_qwen_decoder_config_reads_as_qwen2_vl(saved):
    out = trtllm_hf_config(saved)
    assert out["model_type"] == "qwen2_vl" and out["architectures"] == ["Qwen2VLForConditionalGeneration"]
    # configs/qwen-tiny.json: the text fields at the top level, as Qwen2-VL's flat config has them
    assert (out["hidden_size"], out["num_hidden_layers"], out["num_attention_heads"]) == (64, 2, 4)
    assert (out["num_key_value_heads"], out["intermediate_size"], out["vocab_size"]) == (2, 128, 320)
    assert out["rope_theta"] == 10000.0 and out["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]}
    assert out["max_position_embeddings"] == 8192 and out["rms_norm_eps"] == 1e-6
    assert "text_config" not in out and "rope_parameters" not in out and out["vision_config"]["depth"] == 4
    assert saved["model_type"] == "qwen2_5_vl"  # the decoder's own config is left as it is
    parsed = AutoConfig.for_model(**{k: v for k, v in out.items() if k != "architectures"})
    assert parsed.model_type == "qwen2_vl" and parsed.get_text_config().hidden_size == 64


def test_a_decoder_without_mrope_is_left_as_it_is():
    config = {"model_type": "qwen2", "hidden_size": 8, "rope_theta": 1e6, "rope_scaling": None}
    assert trtllm_hf_config(config) is config


def test_mrope_settings_of_the_published_config():
    mrope = Mrope.of(packaged_config("qwen2.5-vl-7b").get_text_config())
    assert mrope == Mrope(1_000_000.0, 128, (16, 24, 24), 128_000)  # 3584 / 28 heads; Qwen2.5-VL-7B's config.json
    assert Mrope.of(packaged_config("tiny").get_text_config()) is None  # plain RoPE: TensorRT-LLM numbers it


def test_mrope_table_equals_transformers_rotary_embedding(qwen):
    # a prompt: 2 text tokens, 4 visual tokens at (t, h, w) with gaps and repeats, 2 text tokens after
    positions = torch.tensor([[0, 1, 2, 2, 6, 6, 9, 10], [0, 1, 2, 3, 2, 3, 9, 10], [0, 1, 2, 2, 3, 3, 9, 10]])
    mrope = Mrope.of(qwen.model.config.get_text_config())
    assert mrope == Mrope(10000.0, 16, (2, 3, 3), 8192)
    table = mrope_table(positions, mrope).view(8192, 8, 2)  # [position, frequency, (cos, sin)]
    rotary = qwen.model.model.language_model.rotary_emb
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions[:, None])  # [1, S, 16]: (freq, freq)
    torch.testing.assert_close(table[:8, :, 0], cos[0, :, :8], rtol=0, atol=1e-6)
    torch.testing.assert_close(table[:8, :, 1], sin[0, :, :8], rtol=0, atol=1e-6)
    assert torch.equal(table[8:, :, 0], torch.ones(8184, 8)) and torch.equal(table[8:, :, 1], torch.zeros(8184, 8))


def test_mrope_table_refuses_a_prompt_longer_than_the_table():
    mrope = Mrope(10000.0, 16, (2, 3, 3), 4)
    with pytest.raises(ValueError, match=r"positions must be \[3, S\] with S <= 4"):
        mrope_table(torch.zeros(3, 5, dtype=torch.long), mrope)


def test_mrope_delta_by_hand():
    # 8 prompt tokens whose largest position is 10: generated token 0 takes position 11 = 8 + 0 + 3
    positions = torch.tensor([[0, 1, 2, 2, 6, 6, 9, 10], [0, 1, 2, 3, 2, 3, 9, 10], [0, 1, 2, 2, 3, 3, 9, 10]])
    assert mrope_delta(positions) == 3
    assert mrope_delta(torch.arange(5).expand(3, 5)) == 0  # text only: 0..S-1
    table, deltas = mrope_params(positions[:, None], Mrope(10000.0, 16, (2, 3, 3), 16))
    assert table.shape == (1, 16 * 16) and table.dtype == torch.float32
    assert deltas.tolist() == [[3]] and deltas.dtype == torch.int32


@pytest.mark.skipif(not TRTLLM, reason="tensorrt_llm is not installed (it needs an NVIDIA GPU machine)")
def test_mrope_params_are_what_tensorrt_llm_takes():  # pragma: no cover - runs where TensorRT-LLM is installed
    from tensorrt_llm.layers import MropeParams

    table, deltas = mrope_params(torch.arange(6).expand(3, 1, 6), Mrope(10000.0, 16, (2, 3, 3), 16))
    params = MropeParams(mrope_rotary_cos_sin=table, mrope_position_deltas=deltas)
    assert params.mrope_rotary_cos_sin is table and params.mrope_position_deltas is deltas


@pytest.mark.skipif(not importlib.util.find_spec("tensorrt"), reason="TensorRT is not installed (no GPU machine)")
@pytest.mark.skipif(not TRTLLM, reason="tensorrt_llm is not installed (it needs an NVIDIA GPU machine)")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_qwen_tensorrt_engines_match_eager(tmp_path, qwen, clips):  # pragma: no cover - runs on a GPU machine only
    from earlytom.compress import EarlyTomConfig
    from earlytom.engine_builder.build import build
    from earlytom.runtime.pipeline import Pipeline

    config = EarlyTomConfig(retain_ratio=0.15, inner_ratio=0.0)
    build("qwen-tiny", tmp_path / "trt", backend="tensorrt", frames=8, config=config, progress=False)
    trt = Pipeline.from_engine_dir(tmp_path / "trt").generate(clips["cut"], "x", max_new_tokens=4)
    eager = Pipeline.from_model(qwen, num_frames=8, config=config).generate(clips["cut"], "x", max_new_tokens=4)
    assert trt.counts == eager.counts and trt.token_ids == eager.token_ids

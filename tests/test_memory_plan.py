"""The memory plan (`earlytom plan`, earlytom.engine.memory_plan): weights and KV cache against hand arithmetic from
the published LLaVA-OneVision configs (earlytom/models/configs/*.json), the refusal and its fixes, bad targets, and
the command line end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earlytom.cli import main
from earlytom.engine.memory_plan import (
    DoesNotFit,
    ParameterCounts,
    VisionShape,
    check_fits,
    memory_sizes,
    parse_target,
    plan_memory,
)
from earlytom.models.registry import packaged_config

REPO = Path(__file__).resolve().parents[1]
GIB = 1073741824

# SigLIP so400m/14 at 384 px (vision_config of both checkpoints): width 1152, MLP 4304, 26 layers, 27 x 27 = 729
# patches. Patch embedding conv 3x14x14 -> 1152 with bias; a position embedding per patch; per layer q, k, v, out
# projections with biases, fc1 and fc2 with biases, two LayerNorms (weight + bias); the post-LayerNorm.
SIGLIP = (
    3 * 14 * 14 * 1152
    + 1152
    + 729 * 1152
    + 26 * (4 * (1152 * 1152 + 1152) + (1152 * 4304 + 4304) + (4304 * 1152 + 1152) + 2 * 2 * 1152)
    + 2 * 1152
)
assert SIGLIP == 397_747_744  # the ~400M of "so400m"


def projector_and_newline(d_llm: int) -> int:
    """linear_1 1152 -> D' and linear_2 D' -> D', both with biases; the image_newline vector [D']."""
    return (1152 * d_llm + d_llm) + (d_llm * d_llm + d_llm) + d_llm


# Qwen2-7B (text_config of llava-ov-7b): vocab 152128, D' 3584, MLP 18944, 28 layers, 28 heads, 4 KV heads of
# 128 -> k/v width 512. Linear weights per layer: q 3584x3584, k and v 3584x512, o 3584x3584, gate and up
# 3584x18944, down 18944x3584.
LINEAR_7B = 28 * (3584 * 3584 + 2 * 3584 * 512 + 3584 * 3584 + 3 * 3584 * 18944)
# The rest: embed_tokens and the untied lm_head 152128x3584 each; per layer q/k/v biases (3584 + 512 + 512) and two
# RMSNorm weights; the final norm.
OTHER_7B = 2 * 152128 * 3584 + 28 * (3584 + 512 + 512 + 2 * 3584) + 3584
# int4 groups of 128 input channels: out_features * in_features / 128 per linear (3584 / 128 = 28, 18944 / 128 = 148)
GROUPS_7B = 28 * (3584 * 28 + 512 * 28 + 512 * 28 + 3584 * 28 + 18944 * 28 + 18944 * 28 + 3584 * 148)

# Qwen2-0.5B (llava-ov-0.5b): vocab 152000, D' 896, MLP 4864, 24 layers, 14 heads, 2 KV heads of 64 -> k/v width
# 128; the lm_head is tied to embed_tokens (stored once).
LINEAR_05B = 24 * (896 * 896 + 2 * 896 * 128 + 896 * 896 + 3 * 896 * 4864)
OTHER_05B = 152000 * 896 + 24 * (896 + 128 + 128 + 2 * 896) + 896
GROUPS_05B = 24 * (896 * 7 + 128 * 7 + 128 * 7 + 896 * 7 + 4864 * 7 + 4864 * 7 + 896 * 38)


def ov_vision(d_llm: int) -> VisionShape:
    return VisionShape(
        unit_pixels=3 * 384 * 384,
        patch_tokens=729,
        hidden=1152,
        heads=16,
        mlp_hidden=4304,
        tokens_per_frame=196,
        llm_hidden=d_llm,
    )


@pytest.fixture(scope="module")
def ov7b():
    return memory_sizes(packaged_config("llava-ov-7b"), ov_vision(3584))


@pytest.fixture(scope="module")
def ov05b():
    return memory_sizes(packaged_config("llava-ov-0.5b"), ov_vision(896))


def row(plan, prefix: str) -> int:
    (found,) = [r.bytes for r in plan.rows if r.name.startswith(prefix)]
    return found


def test_parameter_counts_of_llava_ov_7b_match_the_hand_count(ov7b):
    assert ov7b.params == ParameterCounts(
        vision=SIGLIP + projector_and_newline(3584),
        decoder_linear=LINEAR_7B,
        decoder_linear_layers=28 * 7,
        decoder_linear_groups=GROUPS_7B,
        decoder_other=OTHER_7B,
    )
    assert ov7b.params.decoder == 7_616_075_264  # Qwen2-7B: "7.6B"


def test_parameter_counts_of_llava_ov_05b_count_the_tied_embedding_once(ov05b):
    assert ov05b.params == ParameterCounts(
        vision=SIGLIP + projector_and_newline(896),
        decoder_linear=LINEAR_05B,
        decoder_linear_layers=24 * 7,
        decoder_linear_groups=GROUPS_05B,
        decoder_other=OTHER_05B,
    )
    assert ov05b.params.decoder == 494_090_112  # Qwen2-0.5B: "0.49B"


@pytest.mark.parametrize(
    ("precision", "decoder_bytes", "vision_bytes"),
    [
        ("fp32", 4 * (LINEAR_7B + OTHER_7B), 4 * (SIGLIP + projector_and_newline(3584))),
        ("fp16", 2 * (LINEAR_7B + OTHER_7B), 2 * (SIGLIP + projector_and_newline(3584))),
        ("bf16", 2 * (LINEAR_7B + OTHER_7B), 2 * (SIGLIP + projector_and_newline(3584))),
        # 1 byte per linear weight, two fp32 scales per linear layer, the rest in 16 bits
        ("fp8", LINEAR_7B + 196 * 8 + 2 * OTHER_7B, 2 * (SIGLIP + projector_and_newline(3584))),
        # half a byte per linear weight, an fp16 scale and an fp16 zero per group, the rest in 16 bits
        ("int4_awq", LINEAR_7B // 2 + 4 * GROUPS_7B + 2 * OTHER_7B, 2 * (SIGLIP + projector_and_newline(3584))),
    ],
)
def test_weights_of_llava_ov_7b_per_precision(ov7b, precision, decoder_bytes, vision_bytes):
    plan = plan_memory(ov7b, 32, "h100", decoder_precision=precision)
    assert row(plan, "decoder weights") == decoder_bytes == plan.decoder_weights[precision]
    assert row(plan, "vision weights") == vision_bytes


def test_fp16_weights_of_llava_ov_7b_in_gib(ov7b):
    # 7,616,075,264 * 2 bytes = 14.19 GiB; 414,732,320 * 2 = 0.77 GiB
    plan = plan_memory(ov7b, 32, "rtx4090")
    assert round(row(plan, "decoder weights") / GIB, 2) == 14.19
    assert round(row(plan, "vision weights") / GIB, 2) == 0.77


@pytest.mark.parametrize(
    ("model", "precision", "context", "kv_bytes"),
    [
        # 2 (K and V) * layers * kv_heads * head_dim * tokens * bytes
        ("ov7b", "fp16", 10000, 2 * 28 * 4 * 128 * 10000 * 2),
        ("ov7b", "int4_awq", 10000, 2 * 28 * 4 * 128 * 10000 * 2),  # the KV cache stays fp16
        ("ov7b", "fp32", 4096, 2 * 28 * 4 * 128 * 4096 * 4),
        ("ov05b", "fp16", 10000, 2 * 24 * 2 * 64 * 10000 * 2),
        ("ov05b", "bf16", 32768, 2 * 24 * 2 * 64 * 32768 * 2),
    ],
)
def test_kv_cache_matches_the_hand_count(request, model, precision, context, kv_bytes):
    plan = plan_memory(request.getfixturevalue(model), 16, "h100", max_context=context, decoder_precision=precision)
    assert plan.max_context == context
    assert row(plan, "KV cache") == kv_bytes


def test_the_default_context_holds_every_visual_token_and_1024_text_tokens(ov7b):
    plan = plan_memory(ov7b, 32, "h100")
    assert plan.max_context == 32 * 196 + 1 + 512 + 512 == 7297
    assert row(plan, "KV cache") == 2 * 28 * 4 * 128 * 7297 * 2
    # 200 frames would need 40,225 tokens: capped at max_position_embeddings
    assert plan_memory(ov7b, 200, "h100").max_context == 32768


def test_vision_activations_before_the_first_merge_match_the_hand_count(ov7b):
    # per frame: hidden in + out 2*729*1152*2, fp32 scores 16*729*729*4, MLP 729*4304*2, pixels 3*384*384*2
    per_frame = 2 * 729 * 1152 * 2 + 16 * 729 * 729 * 4 + 729 * 4304 * 2 + 3 * 384 * 384 * 2
    plan = plan_memory(ov7b, 64, "h100")
    assert row(plan, "vision activations, before") == 64 * per_frame


def test_the_total_counts_the_larger_vision_stage_once(ov7b):
    plan = plan_memory(ov7b, 64, "h100")
    before, after = row(plan, "vision activations, before"), row(plan, "vision activations, after")
    everything = sum(r.bytes for r in plan.rows)
    assert plan.total == everything - min(before, after)
    assert [r.counted for r in plan.rows].count(False) == 1


def test_llava_ov_7b_fits_an_rtx4090_at_32_and_64_frames(ov7b):
    for frames in (32, 64):
        plan = plan_memory(ov7b, frames, "rtx4090")
        assert plan.fits and plan.fixes is None
        check_fits(plan)  # no refusal
        assert "fits on rtx4090" in plan.table()


def fits(sizes, frames, target, **options) -> bool:
    return plan_memory(sizes, frames, target, **options).fits


def test_a_plan_that_does_not_fit_is_refused_with_fixes_that_fit(ov7b):
    plan = plan_memory(ov7b, 96, "rtx4090")
    assert not plan.fits
    fixes = plan.fixes
    assert fits(ov7b, fixes.frames, "rtx4090") and not fits(ov7b, fixes.frames + 1, "rtx4090")
    assert fits(ov7b, 96, "rtx4090", max_context=fixes.max_context)
    assert not fits(ov7b, 96, "rtx4090", max_context=fixes.max_context + 1)
    assert fixes.decoder_precision == "fp8" and fits(ov7b, 96, "rtx4090", decoder_precision="fp8")
    assert fixes.gpu == "a100-40g"
    with pytest.raises(DoesNotFit) as refusal:
        check_fits(plan)
    message = str(refusal.value)
    assert "does NOT fit on rtx4090" in message
    for option in (f"--frames {fixes.frames}", f"--max-context {fixes.max_context}", "--decoder-precision fp8"):
        assert option in message


def test_the_precision_fix_skips_fp8_when_only_int4_fits(ov7b):
    # 7B fp16 at 32 frames is 20.4 GiB; fp8 weights save 6.1 GiB, int4_awq 8.9 GiB
    plan = plan_memory(ov7b, 32, "12GiB")
    assert not fits(ov7b, 32, "12GiB", decoder_precision="fp8")
    assert plan.fixes.decoder_precision == "int4_awq" and fits(ov7b, 32, "12GiB", decoder_precision="int4_awq")


def test_a_given_context_stays_fixed_while_fewer_frames_are_tried(ov7b):
    plan = plan_memory(ov7b, 96, "rtx4090", max_context=30000)
    assert plan.max_context == 30000
    frames = plan.fixes.frames
    assert fits(ov7b, frames, "rtx4090", max_context=30000)
    assert not fits(ov7b, frames + 1, "rtx4090", max_context=30000)
    assert frames < plan_memory(ov7b, 96, "rtx4090").fixes.frames  # the longer context leaves less for frames


def test_nothing_but_a_bigger_gpu_fits_when_the_fixed_costs_alone_exceed_the_target(ov05b):
    plan = plan_memory(ov05b, 8, "2GiB")  # 0.74 + 0.92 GiB of weights + 1.5 GiB fixed
    assert (plan.fixes.frames, plan.fixes.max_context, plan.fixes.decoder_precision) == (None, None, None)
    assert plan.fixes.gpu == "rtx4090"


@settings(max_examples=25, deadline=None)
@given(frames=st.integers(2, 160), target_gib=st.floats(3.0, 30.0), precision=st.sampled_from(["fp32", "fp16"]))
def test_every_fix_fits_and_the_frame_fix_is_the_largest(ov05b, frames, target_gib, precision):
    target = f"{target_gib}GiB"
    plan = plan_memory(ov05b, frames, target, decoder_precision=precision)
    if plan.fits:
        assert plan.fixes is None and plan.total <= target_gib * GIB + 1
        return
    fixes = plan.fixes
    if fixes.frames is None:
        assert not fits(ov05b, 2, target, decoder_precision=precision)
    else:
        assert fits(ov05b, fixes.frames, target, decoder_precision=precision)
        assert all(not fits(ov05b, f, target, decoder_precision=precision) for f in range(fixes.frames + 1, frames))
    if fixes.max_context is not None:
        assert fits(ov05b, frames, target, decoder_precision=precision, max_context=fixes.max_context)
    if fixes.decoder_precision is not None:
        assert fixes.decoder_precision in ("fp8", "int4_awq")
        assert fits(ov05b, frames, target, decoder_precision=fixes.decoder_precision)


@pytest.mark.parametrize(
    ("target", "capacity"),
    [("rtx4090", 24 * GIB), ("RTX4090", 24 * GIB), ("l4", 24 * GIB), ("a10", 24 * GIB), ("a100-40g", 40 * GIB)]
    + [("a100-80g", 80 * GIB), ("h100", 80 * GIB), ("16GiB", 16 * GIB), ("11.5gib", 11 * GIB + GIB // 2)],
)
def test_targets(target, capacity):
    assert parse_target(target)[1] == capacity


@pytest.mark.parametrize("target", ["rtx5090", "24GB", "24", "0GiB", "-8GiB", "GiB", "nanGiB", "infGiB", ""])
def test_a_bad_target_names_the_valid_ones(target):
    with pytest.raises(ValueError, match="rtx4090, l4, a10, a100-40g, a100-80g, h100 or a memory size such as 16GiB"):
        parse_target(target)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"frames": 1}, "frames = 1: plan at least 2 frames"),
        ({"max_context": 0}, "max context = 0: give a token count from 1"),
        ({"max_context": 40000}, r"max_position_embeddings \(32768\)"),
        ({"decoder_precision": "int8"}, "decoder precision 'int8' is unknown: use one of fp32, fp16"),
    ],
)
def test_bad_settings_are_named(ov05b, options, message):
    with pytest.raises(ValueError, match=message):
        plan_memory(ov05b, **({"frames": 32, "target": "rtx4090"} | options))


def earlytom(*args: str) -> subprocess.CompletedProcess:
    """`python -m earlytom.cli` from this checkout, offline (the plan reads the packaged configs only)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "earlytom.cli", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_cli_prints_the_plan_and_exits_0():
    done = earlytom("plan", "--model", "llava-ov-7b", "--frames", "64", "--target-gpu", "rtx4090")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "memory plan: llava-ov-7b, 64 frames, decoder fp16, max context 13569 tokens" in done.stdout
    assert "decoder weights (7,616,075,264 params, fp16)" in done.stdout
    assert "fits on rtx4090" in done.stdout and "Traceback" not in done.stderr


def test_cli_refuses_a_bad_target_with_one_error_line():
    done = earlytom("plan", "--model", "llava-ov-0.5b", "--frames", "32", "--target-gpu", "rtx5090")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert errors == [
        "error: target GPU 'rtx5090' is unknown: use one of rtx4090, l4, a10, a100-40g, a100-80g, h100 or a memory "
        "size such as 16GiB"
    ]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_cli_refuses_a_plan_that_does_not_fit_and_names_the_fix(capsys, ov7b):
    status = main(["plan", "--model", "llava-ov-7b", "--frames", "96", "--target-gpu", "rtx4090"])
    out, err = capsys.readouterr()
    frames = plan_memory(ov7b, 96, "rtx4090").fixes.frames
    assert status == 2
    assert "does NOT fit on rtx4090" in out  # the table is printed before the refusal
    (error,) = err.splitlines()
    assert error.startswith("error: llava-ov-7b (frames 96, max context 19841 tokens, decoder fp16) needs ")
    assert f"--frames {frames}" in error and "--decoder-precision fp8" in error


def test_cli_json_is_the_plan(capsys):
    status = main(["plan", "--model", "llava-ov-0.5b", "--frames", "32", "--target-gpu", "l4", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert status == 0 and plan["fits"] and plan["fixes"] is None
    assert plan["capacity_bytes"] == 24 * GIB and plan["max_context"] == 7297
    assert plan["total_bytes"] == sum(r["bytes"] for r in plan["rows"] if r["counted"])
    assert plan["decoder_weights_bytes"]["fp16"] == 2 * (LINEAR_05B + OTHER_05B)


def test_cli_plans_encoder_units_and_refuses_frames_that_fill_none(capsys):
    """A model of two frames per unit: 8 frames are planned as 4 units (the vision rows at 4 units, as build_engine
    plans them), and 7 frames are refused with the fix."""
    assert main(["plan", "--model", "qwen-tiny", "--frames", "8", "--target-gpu", "24GiB", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 4
    assert main(["plan", "--model", "qwen-tiny", "--frames", "7", "--target-gpu", "24GiB"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: frames = 7: this model fuses 2 frames into one encoder unit; sample a multiple of 2 (e.g. --frames 8)"
    ]

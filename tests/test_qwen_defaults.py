"""Family default EarlyTom parameters (DESIGN 8): Qwen2.5-VL defaults to r = 0.15 (Table 7), LLaVA keeps the
variant's defaults; the user's fields win, None means default. Expected values are the documented numbers."""

import pytest

from earlytom.compress import EarlyTomConfig
from earlytom.models.registry import family_config, family_of, load_model


@pytest.fixture(scope="module")
def qwen():
    return load_model("qwen-tiny")


def test_qwen_defaults_to_table_7s_retain_ratio_under_both_variants(qwen):
    official = qwen.resolve({})
    assert official.retain_ratio == 0.15
    assert (official.variant, official.alpha, official.tau_seg, official.max_window) == ("official", 0.9, 0.5, 6)
    paper = qwen.resolve({"variant": "paper", "retain_ratio": None})
    assert (paper.retain_ratio, paper.alpha, paper.tau_seg) == (0.15, 0.6, 0.75)


def test_given_fields_win_over_the_family_default_even_when_equal_to_the_variant_default(qwen):
    assert qwen.resolve({"retain_ratio": 0.2}).retain_ratio == 0.2
    assert qwen.resolve({"retain_ratio": 0.15, "tau_seg": 0.7}).tau_seg == 0.7


def test_a_whole_config_is_taken_as_it_is(qwen):
    assert qwen.resolve(EarlyTomConfig(retain_ratio=0.25)).retain_ratio == 0.25
    assert qwen.resolve(EarlyTomConfig()).retain_ratio == 0.20  # already resolved to the variant's default


def test_llava_keeps_the_variant_defaults():
    llava = family_of("llava_onevision")
    assert family_config(llava, {}).retain_ratio == 0.20
    assert family_config(llava, {"variant": "paper"}).retain_ratio == 0.15
    assert family_config(family_of("qwen2_5_vl"), {"retain_ratio": None}).retain_ratio == 0.15


def test_a_bad_given_value_is_still_refused(qwen):
    with pytest.raises(ValueError, match="retain_ratio"):
        qwen.resolve({"retain_ratio": 1.5})


def test_the_command_line_and_the_api_apply_the_family_default_when_no_ratio_is_given():
    from earlytom.commands import build_pipeline, parser
    from earlytom.runtime.pipeline import Pipeline

    def ratio(*extra):
        args = parser().parse_args(["run", "--model", "qwen-tiny", "--video", "v", "--prompt", "p", *extra])
        return build_pipeline(args).config.retain_ratio

    assert ratio() == 0.15
    assert ratio("--retain-ratio", "0.3") == 0.3
    assert ratio("--variant", "paper") == 0.15
    loaded = load_model("tiny")
    assert Pipeline.from_model(loaded).config.retain_ratio == 0.20
    assert Pipeline.from_model(load_model("qwen-tiny"), config={"retain_ratio": None}).config.retain_ratio == 0.15

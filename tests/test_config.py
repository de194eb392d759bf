"""EarlyTomConfig: per-variant defaults, None vs explicit, every range check, for_model on any depth, round trip."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from earlytom.compress import EarlyTomConfig, frame_merge
from earlytom.compress.config import spread_layers


def test_official_is_the_default_with_the_released_values():
    config = EarlyTomConfig()
    assert (config.variant, config.alpha, config.tau_seg, config.retain_ratio, config.max_window) == (
        "official",
        0.9,
        0.5,
        0.2,
        6,
    )
    assert config.tau_merge is None
    assert (config.merge_layers, config.inner_layer, config.inner_ratio) == (None, None, None)  # model-dependent
    llava = config.for_model(26, 28)
    assert (llava.merge_layers, llava.inner_layer, llava.inner_ratio) == ((8, 21, 23), 18, 0.5)


def test_paper_defaults():
    config = EarlyTomConfig(variant="paper")
    assert (config.alpha, config.tau_seg, config.tau_merge, config.retain_ratio) == (0.6, 0.75, 0.8, 0.15)
    assert config.max_window is None
    llava = config.for_model(26, 28)
    # Today's k = n // 4 = 6: layers [0, 6) see all frames, so compression runs after layer 5. No inner merge.
    assert (llava.merge_layers, llava.inner_layer, llava.inner_ratio) == ((5,), None, 0.0)
    assert config.for_model(4, 2).merge_layers == (0,)


def test_explicit_values_are_used_exactly():
    config = EarlyTomConfig(alpha=0.3, tau_seg=-0.2, retain_ratio=0.1, merge_layers=[2, 5], max_window=2)
    assert (config.alpha, config.tau_seg, config.retain_ratio, config.merge_layers, config.max_window) == (
        0.3,
        -0.2,
        0.1,
        (2, 5),
        2,
    )
    resolved = config.for_model(6, 4)
    assert resolved.merge_layers == (2, 5) and resolved.alpha == 0.3
    assert EarlyTomConfig(inner_ratio=0.0).for_model(26, 28).inner_ratio == 0.0  # explicitly no inner merge
    assert EarlyTomConfig(inner_layer=3, inner_ratio=0.25).for_model(26, 28).inner_layer == 3
    assert EarlyTomConfig(variant="paper", tau_merge=0.9, inner_ratio=0.5).for_model(26, 28).inner_layer == 18


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"variant": "fast"}, r"variant = 'fast' is not one of official, paper"),
        ({"alpha": 0.0}, r"alpha = 0.0 is outside the valid range \(0.0, 1.0\]"),
        ({"alpha": 1.5}, r"alpha = 1.5 is outside"),
        ({"tau_seg": 1.5}, r"tau_seg = 1.5 is outside the valid range \[-1.0, 1.0\]"),
        ({"tau_seg": float("nan")}, r"tau_seg = nan is outside"),
        ({"variant": "paper", "tau_merge": -2.0}, r"tau_merge = -2.0 is outside the valid range \[-1.0, 1.0\]"),
        ({"tau_merge": 0.8}, r"tau_merge = 0.8 is for variant 'paper'"),
        ({"variant": "paper", "max_window": 6}, r"max_window = 6 is for variant 'official'"),
        ({"retain_ratio": 0.0}, r"retain_ratio = 0.0 is outside the valid range \(0.0, 1.0\]"),
        ({"retain_ratio": 1.5}, r"retain_ratio = 1.5 is outside"),
        ({"max_window": 1}, r"max_window = 1 must be an integer in \[2, ...\)"),
        ({"max_window": 6.0}, r"max_window = 6.0 must be an integer"),
        ({"max_window": True}, r"max_window = True must be an integer"),
        ({"merge_layers": ()}, r"merge_layers = \(\) must be a non-empty sequence"),
        ({"merge_layers": "8,21"}, r"merge_layers = '8,21' must be a non-empty sequence"),
        ({"merge_layers": (8, 8)}, r"merge_layers = \(8, 8\) must be strictly increasing"),
        ({"merge_layers": (21, 8)}, r"merge_layers = \(21, 8\) must be strictly increasing"),
        ({"merge_layers": (-1, 8)}, r"merge_layers = \(-1, 8\): layer = -1 must be an integer in \[0, ...\)"),
        ({"merge_layers": (1.5,)}, r"layer = 1.5 must be an integer"),
        ({"variant": "paper", "merge_layers": (2, 5)}, r"variant 'paper' merges after exactly one layer"),
        ({"inner_ratio": 1.0}, r"inner_ratio = 1.0 is outside the valid range \[0, 1\)"),
        ({"inner_ratio": -0.1}, r"inner_ratio = -0.1 is outside"),
        ({"inner_layer": 0}, r"inner_layer = 0 must be an integer in \[1, ...\)"),
        ({"inner_layer": 3, "inner_ratio": 0.0}, r"inner_layer = 3 given with inner_ratio = 0"),
    ],
)
def test_every_range_check_names_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        EarlyTomConfig(**kw)


@pytest.mark.parametrize(
    ("config", "depths", "match"),
    [
        (EarlyTomConfig(), (4, 2), None),
        (EarlyTomConfig(merge_layers=(8, 21, 23)), (4, 2), r"layer = 8 must be an integer in \[0, 3\] for a 4-layer"),
        (EarlyTomConfig(inner_layer=18), (4, 2), r"inner_layer = 18 must be an integer in \[1, 1\] for a 2-layer"),
        (EarlyTomConfig(inner_layer=2), (4, 2), r"inner_layer = 2 must be an integer in \[1, 1\]"),
        (EarlyTomConfig(inner_ratio=0.5), (4, 1), r"inner_ratio = 0.5: a 1-layer decoder has no layer"),
        (EarlyTomConfig(variant="paper", inner_layer=1), (4, 2), r"inner_layer = 1 given with inner_ratio = 0"),
        (EarlyTomConfig(), (0, 2), r"encoder_layers = 0 must be an integer in \[1, ...\)"),
        (EarlyTomConfig(), (4, 0), r"decoder_layers = 0 must be an integer"),
    ],
)
def test_for_model_checks_given_values_against_the_depth(config, depths, match):
    if match is None:
        assert config.for_model(*depths).merge_layers == (0, 2, 3)
        return
    with pytest.raises(ValueError, match=match):
        config.for_model(*depths)


def test_one_layer_decoder_gets_no_inner_merge_by_default():
    config = EarlyTomConfig().for_model(3, 1)
    assert (config.inner_ratio, config.inner_layer) == (0.0, None)


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("encoder_layers", range(2, 41))
def test_for_model_gives_valid_defaults_on_any_depth(variant, encoder_layers):
    for decoder_layers in range(2, 41):
        config = EarlyTomConfig(variant=variant).for_model(encoder_layers, decoder_layers)
        layers = config.merge_layers
        assert all(0 <= layer <= encoder_layers - 1 for layer in layers)
        assert all(b > a for a, b in zip(layers, layers[1:], strict=False))
        assert len(layers) == (min(3, encoder_layers) if variant == "official" else 1)
        if variant == "official":
            assert 1 <= config.inner_layer <= decoder_layers - 1 and config.inner_ratio == 0.5
        # The resolved config is itself valid and resolves to itself.
        assert EarlyTomConfig.from_dict(config.to_dict()).for_model(encoder_layers, decoder_layers) == config


def test_scaled_defaults():
    assert spread_layers((8, 21, 23), 26, 26) == (8, 21, 23)
    assert spread_layers((8, 21, 23), 26, 4) == (0, 2, 3)  # the tiny model: (9, 22, 24)/26 of 4 layers run
    assert spread_layers((8, 21, 23), 26, 3) == (0, 1, 2)  # collisions pushed apart
    assert spread_layers((8, 21, 23), 26, 2) == (0, 1)
    assert spread_layers((8, 21, 23), 26, 1) == (0,)
    # The inner merge at layer 18 of 28, at the same depth fraction 18 / 28 of other decoders, kept in [1, n - 1]:
    # 24 layers: 15.43 -> 15; 28: 18; 14: 9; 7: 4.5 -> 4 (Python's round, half to even, as everywhere in
    # DESIGN.md); 3: 1.93 -> 2; 2: 1.29 -> 1.
    depths = {24: 15, 28: 18, 14: 9, 7: 4, 3: 2, 2: 1}
    assert {d: EarlyTomConfig().for_model(27, d).inner_layer for d in depths} == depths


@settings(max_examples=100, deadline=None)
@given(
    variant=st.sampled_from(["official", "paper"]),
    alpha=st.none() | st.floats(0.01, 1.0),
    tau_seg=st.none() | st.floats(-1.0, 1.0),
    retain_ratio=st.none() | st.floats(0.01, 1.0),
    inner_ratio=st.none() | st.floats(0.0, 0.99),
    depth=st.integers(2, 40),
)
def test_round_trip_through_json(variant, alpha, tau_seg, retain_ratio, inner_ratio, depth):
    config = EarlyTomConfig(
        variant=variant, alpha=alpha, tau_seg=tau_seg, retain_ratio=retain_ratio, inner_ratio=inner_ratio
    )
    for value in (config, config.for_model(depth, depth)):
        assert EarlyTomConfig.from_dict(json.loads(json.dumps(value.to_dict()))) == value


def test_manifest_written_before_variants_reads_as_paper():
    old = {"alpha": 0.6, "tau_seg": 0.75, "tau_merge": 0.8, "retain_ratio": 0.25}
    config = EarlyTomConfig.from_dict(old)
    assert (config.variant, config.tau_merge, config.retain_ratio) == ("paper", 0.8, 0.25)


def test_from_dict_refuses_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown EarlyTomConfig fields \['tau'\]; known fields"):
        EarlyTomConfig.from_dict({"tau": 0.5})


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        EarlyTomConfig().alpha = 0.5


def test_paper_ops_share_the_config_ranges():
    # merge.check_thresholds and EarlyTomConfig use one definition of each range: the same message.
    with pytest.raises(ValueError, match=r"tau_merge = 2.0 is outside the valid range \[-1.0, 1.0\]") as op:
        frame_merge(torch.randn(3, 2, 2), tau_merge=2.0)
    with pytest.raises(ValueError) as conf:
        EarlyTomConfig(variant="paper", tau_merge=2.0)
    assert str(op.value) == str(conf.value)

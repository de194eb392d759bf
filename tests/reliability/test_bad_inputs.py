"""Class 3 and 5 of issue 12: every option and API argument at its boundaries (0, -1, nan, inf, huge, wrong type) is
used exactly or refused with one `error:` line naming it and its valid range, exit status 2; None means the
default and nothing else does."""

import math

import pytest
from reliability_support import assert_one_error

from earlytom.cli import main as earlytom_main
from earlytom.compress import EarlyTomConfig
from earlytom.compress.config import RANGES
from earlytom.engine_builder.build import BuildError, build
from earlytom.engine_builder.build import main as build_main
from earlytom.runtime.backends.base import RunOptions
from earlytom.runtime.pipeline import Pipeline

# (options, what the error line must name); each is refused with exit status 2.
RUN_CASES = [
    (["--frames", "0"], "frames = 0"),
    (["--frames", "-1"], "frames = -1"),
    (["--frames", "5"], "frames = 5 exceeds the 4 frames"),
    (["--frames", str(10**20)], "exceeds the 4 frames"),
    (["--frames", "2.5"], "--frames"),
    (["--retain-ratio", "0"], "retain_ratio = 0.0 is outside the valid range (0.0, 1.0]"),
    (["--retain-ratio", "nan"], "retain_ratio = nan"),
    (["--retain-ratio", "inf"], "retain_ratio = inf"),
    (["--retain-ratio", "-1"], "retain_ratio = -1.0"),
    (["--retain-ratio", "1.5"], "retain_ratio = 1.5"),
    (["--retain-ratio", "x"], "--retain-ratio"),
    (["--retain-ratio", "1e-9", "--method", "global_topk"], "raise retain_ratio to at least"),
    (["--alpha", "nan"], "alpha = nan is outside the valid range (0.0, 1.0]"),
    (["--alpha", "0"], "alpha = 0.0"),
    (["--alpha=-inf"], "alpha = -inf"),
    (["--tau-seg", "inf"], "tau_seg = inf is outside the valid range [-1.0, 1.0]"),
    (["--tau-seg", "nan"], "tau_seg = nan"),
    (["--tau-merge", "0.5"], "tau_merge = 0.5 is for variant 'paper'"),
    (["--max-window", "1"], "max_window = 1 must be an integer in [2, ...)"),
    (["--max-window", "-1"], "max_window = -1"),
    (["--inner-layer", "0"], "inner_layer = 0 must be an integer in [1"),
    (["--inner-layer", "99"], "inner_layer = 99"),
    (["--inner-ratio", "1"], "inner_ratio = 1.0 is outside the valid range [0, 1)"),
    (["--inner-ratio", "nan"], "inner_ratio = nan"),
    (["--inner-ratio", "-0.1"], "inner_ratio = -0.1"),
    (["--no-inner-merge", "--inner-ratio", "0.3"], "contradict"),
    (["--merge-layers", "x"], "'x' is not a comma-separated list"),
    (["--merge-layers", "1,,2"], "'1,,2' is not a comma-separated list"),
    (["--merge-layers", "3,2"], "merge_layers = (3, 2) must be strictly increasing"),
    (["--merge-layers", "-1"], "layer = -1 must be an integer in [0"),
    (["--merge-layers", "0,1,2"], "cannot change merge_layers"),
    (["--variant", "paper"], "cannot change variant"),
    (["--variant", "other"], "--variant"),
    (["--preset", "nope"], "preset = 'nope' is not a known task"),
    (["--preset", "videomme", "--retain-ratio", "0.33"], "retain_ratio = 0.33 has no videomme preset"),
    (["--method", "nope"], "--method"),
    (["--no-compress", "--method", "global_topk"], "--no-compress contradicts --method global_topk"),
    (["--kernels", "nope"], "--kernels"),
    (["--max-new-tokens", "0"], "max_new_tokens = 0: generate at least 1 token"),
    (["--max-new-tokens", "-1"], "max_new_tokens = -1"),
    (["--max-new-tokens", str(10**9)], "exceed the decoder's context window"),
    (["--random-init"], "--random-init is fixed when the engine is built"),
    (["--model", "llava-ov-7b"], "built for model 'tiny', not 'llava-ov-7b'"),
]


def run_cli(main, argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of an in-process CLI call; argparse's refusals exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("options, names", RUN_CASES, ids=[" ".join(c[0]) for c in RUN_CASES])
def test_run_refuses_bad_option_values(engine, clip, capsys, options, names):
    argv = ["run", "--engine", str(engine), "--video", str(clip), "--prompt", "x", "--max-new-tokens", "1"]
    code, err = run_cli(earlytom_main, argv + options, capsys)
    assert code == 2
    assert_one_error(err, names)


def test_run_uses_boundary_values_exactly(engine, clip, capsys):
    """The smallest valid values are used, not replaced: 1 frame, 1 new token, the largest ratio."""
    argv = ["run", "--engine", str(engine), "--video", str(clip), "--prompt", "x", "--json"]
    code, _ = run_cli(earlytom_main, [*argv, "--frames", "1", "--max-new-tokens", "1", "--retain-ratio", "1"], capsys)
    assert code == 0
    pipe = Pipeline.from_engine_dir(engine, num_frames=1)
    result = pipe.generate(clip, "x", max_new_tokens=1)
    assert result.counts["frames_in"] == 1 and len(result.token_ids) == 1


@pytest.mark.parametrize(
    "argv, names",
    [
        (["run", "--engine", "/nonexistent/engine", "--video", "v.mp4", "--prompt", "x"], "not an engine directory"),
        (["run", "--model", "no-such-model", "--video", "v.mp4", "--prompt", "x"], "unknown model 'no-such-model'"),
        (["run", "--model", "tiny", "--video", "/nonexistent.mp4", "--prompt", "x"], "/nonexistent.mp4 does not exist"),
        (["run", "--video", "v.mp4"], "--prompt"),
        (["nope"], "invalid choice"),
    ],
)
def test_run_refuses_missing_things(capsys, argv, names):
    code, err = run_cli(earlytom_main, argv, capsys)
    assert code == 2
    assert_one_error(err, names)


BUILD_CASES = [
    (["--frames", "0"], "frames = 0: engines take at least 2 frames"),
    (["--frames", "1"], "frames = 1: engines take at least 2 frames"),
    (["--frames", "-3"], "frames = -3"),
    (["--frames", "nan"], "--frames"),
    (["--retain-ratio", "0"], "retain_ratio = 0.0"),
    (["--retain-ratio", "nan"], "retain_ratio = nan"),
    (["--retain-ratio", "1e-9", "--variant", "paper"], "refuses every request"),
    (["--merge-layers", "9"], "for a 4-layer encoder"),
    (["--merge-layers", "0,1", "--variant", "paper"], "exactly one layer"),
    (["--inner-layer", "2"], "inner_layer = 2 must be an integer in [1, 1] for a 2-layer decoder"),
    (["--alpha", "2"], "alpha = 2.0"),
    (["--dtype", "int8"], "--dtype"),
    (["--backend", "cuda"], "--backend"),
    (["--gpu-archs", "sm_10"], "--gpu-archs"),
    (["--max-window", "0"], "max_window = 0"),
]


@pytest.mark.parametrize("options, names", BUILD_CASES, ids=[" ".join(c[0]) for c in BUILD_CASES])
def test_build_refuses_bad_option_values_before_writing(tmp_path, capsys, options, names):
    argv = ["--model", "tiny", "--output", str(tmp_path / "e"), "--frames", "2", *options]
    code, err = run_cli(build_main, argv, capsys)
    assert code == 2
    assert_one_error(err, names)
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing half-written


def test_failed_build_removes_the_parents_it_created(tmp_path):
    paper = EarlyTomConfig(variant="paper", retain_ratio=1e-9)
    with pytest.raises(BuildError, match="refuses every request"):
        build("tiny", tmp_path / "new" / "deeper" / "e", frames=2, config=paper, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("frames", [0, 1, -1, True, 2.5, "4", None])
def test_build_api_refuses_frames(tmp_path, frames):
    with pytest.raises(BuildError, match=f"frames = {frames!r}"):
        build("tiny", tmp_path / "e", frames=frames, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options", [{"backend": "cuda"}, {"dtype": "int8"}])
def test_build_api_refuses_choices(tmp_path, options):
    with pytest.raises(ValueError, match=repr(next(iter(options.values())))):
        build("tiny", tmp_path / "e", frames=2, progress=False, **options)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [0, -1, True, 1.0, "2", math.nan])
def test_generate_refuses_max_new_tokens(engine, clip, value):
    pipe = Pipeline.from_engine_dir(engine, num_frames=2)
    with pytest.raises(ValueError, match=r"max_new_tokens = .*generate at least 1 token \(an integer >= 1\)"):
        pipe.generate(clip, "x", max_new_tokens=value)


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "4", math.inf])
def test_pipeline_refuses_num_frames(engine, value):
    with pytest.raises(ValueError, match=r"frames = .*sample at least 1 frame \(an integer >= 1\)"):
        Pipeline.from_engine_dir(engine, num_frames=value)
    with pytest.raises(ValueError, match="frames = "):
        RunOptions(num_frames=value)


def test_none_means_default_and_zero_does_not(engine):
    """None keeps the build's values; 0 is a value like any other (refused here), never "the default"."""
    pipe = Pipeline.from_engine_dir(engine, num_frames=None, method=None, kernels=None)
    assert pipe.options.num_frames == 4 and pipe.options.method == "earlytom"
    assert pipe.with_options(retain_ratio=None).config.retain_ratio == pipe.config.retain_ratio
    with pytest.raises(ValueError, match="retain_ratio = 0"):
        pipe.with_options(retain_ratio=0)


BAD_SCALARS = [0.0, -1.0, math.nan, math.inf, -math.inf, 1e9]


@pytest.mark.parametrize("name", sorted(RANGES))
@pytest.mark.parametrize("value", BAD_SCALARS, ids=repr)
def test_config_scalars_refuse_out_of_range(name, value):
    low, high, low_open = RANGES[name]
    inside = (low < value if low_open else low <= value) and value <= high
    variant = "paper" if name == "tau_merge" else "official"
    if inside:
        assert getattr(EarlyTomConfig(variant=variant, **{name: value}), name) == value  # used exactly
        return
    with pytest.raises(ValueError, match=f"{name} = .* is outside the valid range"):
        EarlyTomConfig(variant=variant, **{name: value})


@pytest.mark.parametrize("value", [True, "0.5"], ids=repr)
def test_config_scalars_refuse_wrong_types(value):
    with pytest.raises(ValueError, match="retain_ratio"):
        EarlyTomConfig(retain_ratio=value)

"""Issue 27: the Python API refuses what it cannot compute on, naming the argument: a NumPy array, a list or None
where a tensor goes (TypeError); integer, bool and complex tensors, a dimension of size 0 (ValueError naming it by
its letter); NaN tokens in the compared methods; static labels that are floats, or integers other than 0 and 1.
Every entry point is first shown to accept the good inputs, in float32 and in half precision, so each refusal below
is the check's and not an accident further in."""

import numpy as np
import pytest
import torch

from earlytom.compress import (
    StreamingFrameMerge,
    StreamingOfficialCompress,
    adjacent_similarity,
    fastvid,
    frame_merge,
    global_topk,
    holitom,
    holitom_llm_merge,
    official_compress,
    pool_bilinear,
    selection_budget,
    token_select,
    uniform,
    visionzip,
)

T, L, D = 4, 9, 6
G = torch.Generator().manual_seed(0)
GOOD = {
    "features": torch.randn(T, L, D, generator=G),
    "attention": torch.rand(T, L, generator=G),
    "global_features": torch.randn(T, 5, generator=G),
    "keys": torch.randn(T, L, 3, generator=G),
    "hidden": torch.randn(T, L, D, generator=G),
    "tokens": torch.randn(T, L, D, generator=G),
    "scores": torch.rand(T, L, generator=G),
    "llm_hidden": torch.randn(1, 12, D, generator=G),
    "llm_attention": torch.rand(1, 2, 12, generator=G),
    "x": torch.randn(T, L, D, generator=G),  # 9 = 3 x 3 patches
}
STATIC = torch.tensor([True, False, True, False])

# entry point -> (call taking the inputs by name, the argument names it takes, each one's shape as messages print it)
CALLS = {
    "fastvid": (
        lambda x: fastvid(x["features"], x["attention"], x["global_features"], retain_ratio=0.5, c=2, jitter=0),
        {"features": "[T, L, D]", "attention": "[T, L]", "global_features": "[T, G]"},
    ),
    "holitom": (
        lambda x: holitom(x["features"], x["attention"], retain_ratio=0.5, tau=0.8, jitter=0),
        {"features": "[T, L, D]", "attention": "[T, L]"},
    ),
    "visionzip": (
        lambda x: visionzip(x["features"], x["attention"], x["keys"], retain_ratio=0.5),
        {"features": "[T, L, D]", "attention": "[T, L]", "keys": "[T, L, Dk]"},
    ),
    "holitom_llm_merge": (
        lambda x: holitom_llm_merge(x["llm_hidden"], x["llm_attention"], image_start=2, image_len=8),
        {"llm_hidden": "[B, N, D]", "llm_attention": "[B, H, N]"},
    ),
    "pool_bilinear": (lambda x: pool_bilinear(x["x"]), {"x": "[T, h*h, C]"}),
    "frame_merge": (lambda x: frame_merge(x["hidden"]), {"hidden": "[B, L, D]"}),
    "adjacent_similarity": (lambda x: adjacent_similarity(x["hidden"]), {"hidden": "[B, L, D]"}),
    "official_compress": (
        lambda x: official_compress(x["hidden"], x["attention"], tau_seg=0.5),
        {"hidden": "[F, L, D]", "attention": "[F, L]"},
    ),
    "global_topk": (
        lambda x: global_topk(x["tokens"], x["scores"], retain_ratio=0.5, num_frames=T),
        {"tokens": "[N, T, D]", "scores": "[N, T]"},
    ),
    "token_select": (
        lambda x: token_select(x["tokens"], x["scores"], STATIC, retain_ratio=0.5, num_frames=T),
        {"tokens": "[N, T, D]", "scores": "[N, T]"},
    ),
    "uniform": (lambda x: uniform(x["tokens"], retain_ratio=0.5, num_frames=T), {"tokens": "[N, T, D]"}),
}
# the name each argument has in the function's signature (the messages use it)
PUBLIC = {"llm_hidden": "hidden", "llm_attention": "attention"}
CASES = [(entry, argument) for entry, (_, arguments) in CALLS.items() for argument in arguments]


def call(entry: str, **changes):
    return CALLS[entry][0](GOOD | changes)


@pytest.mark.parametrize("entry", CALLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_every_entry_point_takes_the_good_inputs_in_any_float_dtype(entry, dtype):
    call(entry, **{name: tensor.to(dtype) for name, tensor in GOOD.items()})


@pytest.mark.parametrize("entry, argument", CASES)
@pytest.mark.parametrize(
    "kind, convert, fix",
    [
        ("ndarray", lambda t: t.numpy(), "convert it with torch.as_tensor"),
        ("list", lambda t: t.tolist(), "convert it with torch.as_tensor"),
        ("NoneType", lambda t: None, "pass one"),
    ],
)
def test_a_non_tensor_is_a_type_error_naming_the_argument(entry, argument, kind, convert, fix):
    name, shape = PUBLIC.get(argument, argument), CALLS[entry][1][argument]
    if (entry, argument, kind) == ("official_compress", "attention", "NoneType"):  # None: no selection reads it
        assert call(entry, attention=None).attention is None
        return
    expected = f"{name} must be a torch.Tensor {shape}, got {kind}; {fix}"
    with pytest.raises(TypeError) as refused:
        call(entry, **{argument: convert(GOOD[argument])})
    assert str(refused.value).startswith(expected)


@pytest.mark.parametrize("entry, argument", CASES)
@pytest.mark.parametrize(
    "dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64], ids=lambda d: str(d)[6:]
)
def test_integer_bool_and_complex_tensors_are_refused_naming_the_argument(entry, argument, dtype):
    name, shape = PUBLIC.get(argument, argument), CALLS[entry][1][argument]
    bad = (GOOD[argument] > 0.5).to(dtype)  # 0/1 values: only the dtype is wrong
    with pytest.raises(ValueError) as refused:
        call(entry, **{argument: bad})
    assert str(refused.value) == f"{name} {shape} has dtype {dtype}; pass a floating-point tensor (e.g. .float())"


def emptied(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    return tensor.narrow(dim, 0, 0)


@pytest.mark.parametrize(
    "entry, argument, dim, letter",
    [
        ("fastvid", "features", 2, "D"),
        ("holitom", "features", 2, "D"),
        ("visionzip", "features", 2, "D"),
        ("visionzip", "keys", 2, "Dk"),
        ("fastvid", "global_features", 1, "G"),
        ("holitom_llm_merge", "llm_hidden", 2, "D"),
        ("frame_merge", "hidden", 1, "L"),
        ("frame_merge", "hidden", 2, "D"),
        ("adjacent_similarity", "hidden", 1, "L"),
        ("adjacent_similarity", "hidden", 2, "D"),
        ("official_compress", "hidden", 2, "D"),
        ("global_topk", "tokens", 2, "D"),
        ("token_select", "tokens", 2, "D"),
        ("uniform", "tokens", 1, "T"),
        ("uniform", "tokens", 2, "D"),
    ],
)
def test_a_dimension_of_size_zero_is_refused_by_its_letter(entry, argument, dim, letter):
    name, shape = PUBLIC.get(argument, argument), CALLS[entry][1][argument]
    bad = emptied(GOOD[argument], dim)
    with pytest.raises(ValueError) as refused:
        call(entry, **{argument: bad})
    expected = f"{name} {shape} = {list(bad.shape)} has {letter} = 0; every dimension must be >= 1"
    assert str(refused.value) == expected


def test_an_empty_token_count_on_two_inputs_names_both_letters():
    with pytest.raises(ValueError, match=r"^tokens \[N, T, D\] = \[4, 0, 0\] has T = 0 and D = 0; every dim"):
        uniform(torch.zeros(4, 0, 0), retain_ratio=0.5, num_frames=4)


def test_a_zero_token_frame_for_official_compress_is_refused_before_its_kernels():
    with pytest.raises(ValueError, match=r"^hidden \[F, L, D\] = \[4, 0, 6\] has L = 0"):
        official_compress(torch.zeros(4, 0, 6), None, tau_seg=0.5)


@pytest.mark.parametrize("entry, argument", [c for c in CASES if c[0] not in ("pool_bilinear", "uniform")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_single_non_finite_value_is_refused(entry, argument, value):
    """One bad value among the rest, in the middle of the tensor (not its first element)."""
    bad = GOOD[argument].clone()
    bad.view(-1)[bad.numel() // 2] = value
    with pytest.raises(ValueError, match=rf"^{PUBLIC.get(argument, argument)} contains .*NaN/Inf"):
        call(entry, **{argument: bad})


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([1.0, 0.0, 1.0, 0.0]), r"is_static \[N\] has dtype torch.float32; pass bool labels"),
        (torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float16), r"is_static \[N\] has dtype torch.float16"),
        (torch.tensor([1, 0, 1, 0], dtype=torch.complex64), r"is_static \[N\] has dtype torch.complex64"),
        (torch.tensor([1, 0, 2, 0]), r"is_static \[N\] holds integers other than 0 and 1"),
        (torch.tensor([1, 0, -1, 0]), r"is_static \[N\] holds integers other than 0 and 1"),
        (np.array([True, False, True, False]), r"is_static must be a torch.Tensor \[N\], got ndarray"),
        ([True, False, True, False], r"is_static must be a torch.Tensor \[N\], got list"),
        (None, r"is_static must be a torch.Tensor \[N\], got NoneType; pass one"),
        (torch.tensor([[True, False, True, False]]), r"is_static must be 1-D \[N\], got shape \[1, 4\]"),
    ],
)
def test_static_labels_must_be_bool_or_zero_one_integers(labels, message):
    error = TypeError if not isinstance(labels, torch.Tensor) else ValueError
    with pytest.raises(error, match=message):
        token_select(GOOD["tokens"], GOOD["scores"], labels, retain_ratio=0.5, num_frames=T)
    with pytest.raises(error, match=message):
        selection_budget(labels, tokens_per_frame=L, retain_ratio=0.5, num_frames=T)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.int8])
def test_zero_one_integer_labels_select_what_bool_labels_select(dtype):
    as_bool = token_select(GOOD["tokens"], GOOD["scores"], STATIC, retain_ratio=0.5, num_frames=T)
    as_int = token_select(GOOD["tokens"], GOOD["scores"], STATIC.to(dtype), retain_ratio=0.5, num_frames=T)
    assert torch.equal(as_int.frame, as_bool.frame) and torch.equal(as_int.index, as_bool.index)


@pytest.mark.parametrize(
    "bad, error", [(np.zeros((L, D), np.float32), TypeError), (torch.zeros(L, D).long(), ValueError)]
)
def test_the_streaming_forms_refuse_alike(bad, error):
    with pytest.raises(error, match="hidden"):
        StreamingFrameMerge().push(bad)
    with pytest.raises(error, match="hidden"):
        StreamingOfficialCompress(tau_seg=0.5).push(bad, torch.rand(L))

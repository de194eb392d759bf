"""The EarlyTom hyper-parameters, one frozen value shared by every backend and stored in the manifest.

Two variants (DESIGN.md): "official" (section 4b, the authors' released code, the default) and "paper" (sections
3-4). A field left None takes its variant's default; a value given is used exactly or refused with its valid range.
The merge layers and the decoder's inner-merge layer depend on the model's depth: `EarlyTomConfig.for_model`
fills them (and checks given ones) for a model with a given number of encoder and decoder layers.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

from earlytom.compress.checks import check_range

# Paper-variant thresholds. The primer's worked example has adjacent similarities s = (0.92, 0.85, 0.78) for
# one still shot: its smoothed similarity never drops below 0.82, and its middle pair (s = 0.85 > 0.78)
# is a local peak that should merge. tau_seg = 0.75 keeps such a shot in one segment while a scene cut
# (similarity falling to ~0.3-0.5, which pulls the alpha = 0.6 EMA well under 0.75) opens a new one;
# tau_merge = 0.80 sits above tau_seg so that only frames more alike than a segment's cohesion merge.
DEFAULT_ALPHA = 0.6
DEFAULT_TAU_SEG = 0.75
DEFAULT_TAU_MERGE = 0.80
DEFAULT_RETAIN_RATIO = 0.15

VARIANTS = ("official", "paper")

# Model-independent defaults per variant (section 4b: the released code's README example for "official").
# merge_layers, inner_layer and inner_ratio are model-dependent: see EarlyTomConfig.for_model.
VARIANT_DEFAULTS = {
    "official": {
        "alpha": 0.9,
        "tau_seg": 0.5,
        "tau_merge": None,  # derived per segment from its head and tail
        "retain_ratio": 0.20,
        "max_window": 6,
    },
    "paper": {
        "alpha": DEFAULT_ALPHA,
        "tau_seg": DEFAULT_TAU_SEG,
        "tau_merge": DEFAULT_TAU_MERGE,
        "retain_ratio": DEFAULT_RETAIN_RATIO,
        "max_window": None,  # the paper's segmentation has no window cap
    },
}
# Default inner_ratio per variant; model-dependent (a 1-layer decoder has no inner merge), resolved by for_model.
DEFAULT_INNER_RATIO = {"official": 0.5, "paper": 0.0}

# LLaVA-OV-7B: the released merge layers of its 26 used SigLIP layers, the inner merge at layer 18 of Qwen2's 28.
OFFICIAL_MERGE_LAYERS, OFFICIAL_ENCODER_DEPTH = (8, 21, 23), 26
OFFICIAL_INNER_LAYER, OFFICIAL_DECODER_DEPTH = 18, 28

# The one definition of each scalar range: (low, high, low_open).
RANGES = {
    "alpha": (0.0, 1.0, True),
    "tau_seg": (-1.0, 1.0, False),
    "tau_merge": (-1.0, 1.0, False),
    "retain_ratio": (0.0, 1.0, True),
}


def check_value(name: str, value: float) -> None:
    """Raise unless `value` lies in the valid range of parameter `name` (alpha, tau_seg, tau_merge, retain_ratio)."""
    low, high, low_open = RANGES[name]
    check_range(name, value, low, high, low_open=low_open)


def check_int(name: str, value: object, low: int, high: int | None = None, why: str = "") -> None:
    """Raise unless `value` is an int (not a bool) in [low, high] (no upper bound when high is None)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        upper = "" if high is None else f", {high}"
        bracket = "]" if high is not None else ", ...)"
        raise ValueError(f"{name} = {value!r} must be an integer in [{low}{upper}{bracket}{why}")


def check_layers(layers: object, *, depth: int | None = None) -> tuple[int, ...]:
    """merge_layers as a tuple: non-empty, strictly increasing 0-based layer indices, in [0, depth - 1] if given."""
    if isinstance(layers, str | bytes) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"merge_layers = {layers!r} must be a non-empty sequence of 0-based encoder layer indices")
    high = None if depth is None else depth - 1
    why = "" if depth is None else f" for a {depth}-layer encoder"
    for layer in layers:
        check_int(f"merge_layers = {tuple(layers)}: layer", layer, 0, high, why)
    if any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
        raise ValueError(f"merge_layers = {tuple(layers)} must be strictly increasing")
    return tuple(layers)


def spread_layers(template: Sequence[int], template_depth: int, depth: int) -> tuple[int, ...]:
    """Scale 0-based layer indices chosen for a `template_depth`-layer stack to a `depth`-layer one, keeping the
    fraction of layers that have run ((l + 1) / template_depth), then pushing collisions apart. The result is
    strictly increasing in [0, depth - 1] for any depth >= 1, with as many layers as the template when depth allows
    (fewer, deduplicated, when depth < len(template))."""
    out = [min(depth, max(1, round((layer + 1) * depth / template_depth))) - 1 for layer in template]
    for k in range(1, len(out)):
        out[k] = max(out[k], out[k - 1] + 1)
    for k in range(len(out)):
        out[k] = max(0, min(out[k], depth - len(out) + k))
    return tuple(dict.fromkeys(out))


def default_merge_layers(variant: str, encoder_layers: int) -> tuple[int, ...]:
    """official: (8, 21, 23) of 26 scaled to the depth; paper: after layer max(1, n // 4) - 1 (layers [0, n // 4)
    see all frames)."""
    if variant == "paper":
        return (max(1, encoder_layers // 4) - 1,)
    return spread_layers(OFFICIAL_MERGE_LAYERS, OFFICIAL_ENCODER_DEPTH, encoder_layers)


def default_inner_layer(decoder_layers: int) -> int:
    """Layer 18 of 28 scaled to a decoder of >= 2 layers, kept in [1, n - 1] (the inner merge at layer k_in uses
    the attention of layer k_in - 1)."""
    return min(decoder_layers - 1, max(1, round(OFFICIAL_INNER_LAYER * decoder_layers / OFFICIAL_DECODER_DEPTH)))


@dataclass(frozen=True)
class EarlyTomConfig:
    """EarlyTom parameters; None means "the variant's default" (model-dependent ones: see `for_model`).

    variant: "official" (DESIGN.md section 4b, default) or "paper" (sections 3-4).
    alpha: EMA weight of the newest similarity, in (0, 1].
    tau_seg: segmentation threshold on the EMA, in [-1, 1].
    tau_merge: paper only, fixed merge threshold in [-1, 1] (official derives it per segment; giving it is refused).
    retain_ratio: the decoder receives about retain_ratio * B * T visual tokens, in (0, 1].
    merge_layers: 0-based encoder layers after whose output compression runs, strictly increasing (paper: one).
    max_window: official only, window cap M >= 2 (a segment holds at most M - 1 frames).
    inner_layer: decoder layer k_in >= 1 from which the inner merge drops tokens (needs inner_ratio > 0).
    inner_ratio: fraction of the visual tokens the decoder's inner merge removes, in [0, 1); 0 = no inner merge.
    merge_layers, inner_layer and inner_ratio stay None until `for_model` resolves them for a model's depth.
    """

    variant: str = "official"
    alpha: float | None = None
    tau_seg: float | None = None
    tau_merge: float | None = None
    retain_ratio: float | None = None
    merge_layers: tuple[int, ...] | None = None
    max_window: int | None = None
    inner_layer: int | None = None
    inner_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant = {self.variant!r} is not one of {', '.join(VARIANTS)}")
        defaults = VARIANT_DEFAULTS[self.variant]
        if self.variant == "official" and self.tau_merge is not None:
            raise ValueError(
                f"tau_merge = {self.tau_merge} is for variant 'paper'; variant 'official' takes each segment's "
                "threshold from the similarity of its head and tail"
            )
        if self.variant == "paper" and self.max_window is not None:
            raise ValueError(f"max_window = {self.max_window} is for variant 'official'; 'paper' has no window cap")
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        for name in RANGES:
            if getattr(self, name) is not None:
                check_value(name, getattr(self, name))
        if self.max_window is not None:
            check_int("max_window", self.max_window, 2, why=" (a segment holds at most max_window - 1 frames)")
        ratio = self.inner_ratio
        if ratio is not None and not (isinstance(ratio, int | float) and 0 <= ratio < 1):
            raise ValueError(f"inner_ratio = {ratio!r} is outside the valid range [0, 1) (0 = no inner merge)")
        if self.inner_layer is not None:
            check_int("inner_layer", self.inner_layer, 1)
            if self.inner_ratio == 0:
                raise ValueError(
                    f"inner_layer = {self.inner_layer} given with inner_ratio = 0 (no inner merge); "
                    "give inner_ratio in (0, 1) or drop inner_layer"
                )
        if self.merge_layers is not None:
            object.__setattr__(self, "merge_layers", check_layers(self.merge_layers))
            if self.variant == "paper" and len(self.merge_layers) != 1:
                raise ValueError(f"merge_layers = {self.merge_layers}: variant 'paper' merges after exactly one layer")

    def for_model(
        self, encoder_layers: int, decoder_layers: int, *, default_layers: Sequence[int] | None = None
    ) -> "EarlyTomConfig":
        """This config with the model-dependent fields filled for a model of that depth: merge_layers (the model's
        `default_layers`; None: default_merge_layers for the depth), inner_ratio (the variant's default; 0 = no
        inner merge when the decoder has a single layer) and inner_layer (None when inner_ratio is 0). Given values
        are checked against the model: merge layers in [0, encoder_layers - 1], inner_layer in
        [1, decoder_layers - 1]."""
        check_int("encoder_layers", encoder_layers, 1)
        check_int("decoder_layers", decoder_layers, 1)
        layers = self.merge_layers
        if layers is None:
            layers = default_merge_layers(self.variant, encoder_layers) if default_layers is None else default_layers
            layers = tuple(layers)
        check_layers(layers, depth=encoder_layers)
        ratio = self.inner_ratio
        if ratio is None:
            ratio = DEFAULT_INNER_RATIO[self.variant] if decoder_layers > 1 else 0.0
        if ratio == 0:
            if self.inner_layer is not None:
                raise ValueError(
                    f"inner_layer = {self.inner_layer} given with inner_ratio = 0 (variant {self.variant!r} default: "
                    "no inner merge); give inner_ratio in (0, 1) or drop inner_layer"
                )
            return replace(self, merge_layers=layers, inner_ratio=0.0)
        if decoder_layers < 2:
            raise ValueError(
                f"inner_ratio = {ratio}: a {decoder_layers}-layer decoder has no layer for the inner merge (it needs "
                "inner_layer in [1, decoder_layers - 1]); give inner_ratio = 0"
            )
        inner_layer = default_inner_layer(decoder_layers) if self.inner_layer is None else self.inner_layer
        check_int("inner_layer", inner_layer, 1, decoder_layers - 1, f" for a {decoder_layers}-layer decoder")
        return replace(self, merge_layers=layers, inner_ratio=ratio, inner_layer=inner_layer)

    def to_dict(self) -> dict:
        """JSON-ready fields (merge_layers as a list)."""
        out = asdict(self)
        if out["merge_layers"] is not None:
            out["merge_layers"] = list(out["merge_layers"])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "EarlyTomConfig":
        """Inverse of to_dict; unknown keys are refused with the known ones. A dict without "variant" was written
        before variants existed (alpha, tau_seg, tau_merge, retain_ratio): it is read as variant "paper"."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EarlyTomConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**({"variant": "paper"} | data))

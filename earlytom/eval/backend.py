"""The pipeline an evaluation runs on, from the options the lmms-eval model and `earlytom compare` share:
an engine directory (`engine`) or a model name on the eager backend (`model`)."""

import dataclasses
from pathlib import Path

from earlytom.compress import EarlyTomConfig
from earlytom.runtime.pipeline import Pipeline


def config_fields(*, variant: str | None, preset: str | None, retain_ratio: float | None, model: str | None) -> dict:
    """The EarlyTomConfig fields asked for: the preset's (a released evaluation script's settings for the retain
    ratio), with the given variant and retain ratio over them. Refused when this earlytom has no variants or
    presets."""
    explicit = {k: v for k, v in (("variant", variant), ("retain_ratio", retain_ratio)) if v is not None}
    if variant is not None and "variant" not in {f.name for f in dataclasses.fields(EarlyTomConfig)}:
        raise ValueError(
            f"variant = {variant!r}: this earlytom's EarlyTomConfig has no variants; install a version with "
            "EarlyTom variants, or leave variant out"
        )
    if preset is None:
        return explicit
    try:
        from earlytom.compress import preset_config, with_preset
    except ImportError:
        raise ValueError(
            f"preset = {preset!r}: this earlytom has no presets; install a version with them, or leave preset out"
        ) from None
    ratio = explicit.get("retain_ratio", EarlyTomConfig().retain_ratio)
    family = "llava-video" if "video" in str(model).lower() else "llava-ov"
    return with_preset(preset_config(preset, ratio, model_family=family), explicit)


def open_pipeline(
    *,
    engine: str | Path | None = None,
    model: str | None = None,
    method: str = "earlytom",
    variant: str | None = None,
    preset: str | None = None,
    retain_ratio: float | None = None,
    frames: int | None = None,
    random_init: bool = False,
) -> Pipeline:
    """The engine directory's backend when `engine` is given (then `model`, if given, must be what it was built
    for), else the eager backend for `model` with the EarlyTom config `variant`, `preset` and `retain_ratio`
    ask for. An engine directory runs the variant and preset it was built with."""
    if engine is not None:
        fixed = [f"{k} = {v!r}" for k, v in (("variant", variant), ("preset", preset)) if v is not None]
        if random_init:
            fixed.append("random_init")
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)}: an engine directory runs what it was built with; pass it to build_engine "
                "(or use model=NAME for the eager backend)"
            )
        return Pipeline.from_engine_dir(
            engine, model=model, retain_ratio=retain_ratio, num_frames=frames, method=method
        )
    if model is None:
        raise ValueError("give an engine directory (engine=DIR / --engine) or a model name (model=NAME / --model)")
    fields = config_fields(variant=variant, preset=preset, retain_ratio=retain_ratio, model=model)
    return Pipeline.from_pretrained(
        model,
        random_init=random_init,
        config=EarlyTomConfig(**fields),
        method=method,
        **({} if frames is None else {"num_frames": frames}),
    )

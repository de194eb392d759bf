"""The pipeline an evaluation runs on, from the options the lmms-eval model and `earlytom compare` share:
an engine directory (`engine`) or a model name on the eager backend (`model`)."""

import dataclasses
import inspect
from pathlib import Path

from earlytom.compress import EarlyTomConfig
from earlytom.runtime.pipeline import Pipeline

CONFIG_OPTIONS = ("variant", "preset")  # EarlyTomConfig fields newer builds of earlytom have


def config_options(variant: str | None, preset: str | None) -> dict:
    """{"variant": ..., "preset": ...} for the values given, refused when this earlytom's EarlyTomConfig lacks them."""
    given = {key: value for key, value in zip(CONFIG_OPTIONS, (variant, preset), strict=True) if value is not None}
    fields = {f.name for f in dataclasses.fields(EarlyTomConfig)}
    for key, value in given.items():
        if key not in fields:
            raise ValueError(
                f"{key} = {value!r}: this earlytom's EarlyTomConfig has no {key!r} "
                f"(fields: {', '.join(sorted(fields))}); install a version with EarlyTom variants, or leave {key} out"
            )
    return given


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
    for), else the eager backend for `model`. Variant and preset go into the EarlyTom config (an engine
    directory fixes both at build time: asking for another is the pipeline's error)."""
    options = config_options(variant, preset)
    if engine is not None:
        if random_init:
            raise ValueError("random_init is fixed when an engine is built; pass --random-init to build_engine")
        accepted = inspect.signature(Pipeline.from_engine_dir).parameters
        unsupported = [key for key in options if key not in accepted]
        if unsupported:
            raise ValueError(
                f"{', '.join(unsupported)} cannot be chosen for an engine directory with this earlytom: it is fixed "
                "when the engine is built (build_engine); leave it out"
            )
        return Pipeline.from_engine_dir(
            engine, model=model, retain_ratio=retain_ratio, num_frames=frames, method=method, **options
        )
    if model is None:
        raise ValueError("give an engine directory (engine=DIR / --engine) or a model name (model=NAME / --model)")
    ratio = {} if retain_ratio is None else {"retain_ratio": retain_ratio}
    return Pipeline.from_pretrained(
        model,
        random_init=random_init,
        config=EarlyTomConfig(**ratio, **options),
        method=method,
        **({} if frames is None else {"num_frames": frames}),
    )

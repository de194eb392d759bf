"""The pipeline an evaluation runs on, from the options the lmms-eval model and `earlytom compare` share:
an engine directory (`engine`) or a model name on the eager backend (`model`)."""

from pathlib import Path

from earlytom.compress import EarlyTomConfig
from earlytom.models.presets import preset_fields
from earlytom.runtime.pipeline import Pipeline


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
    explicit = {k: v for k, v in (("variant", variant), ("retain_ratio", retain_ratio)) if v is not None}
    fields = preset_fields(preset, explicit, model=model)
    return Pipeline.from_pretrained(
        model,
        random_init=random_init,
        config=EarlyTomConfig(**fields),
        method=method,
        **({} if frames is None else {"num_frames": frames}),
    )

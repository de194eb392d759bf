"""Which pipeline a server runs, as a picklable description (Ray builds it again inside each replica)."""

from dataclasses import dataclass
from pathlib import Path

from earlytom.compress import EarlyTomConfig
from earlytom.runtime.pipeline import Pipeline


@dataclass(frozen=True)
class ModelSpec:
    """An engine directory (`engine`, with `model` naming the model it must hold), or the eager backend of `model`.
    None means the pipeline's default."""

    engine: Path | None = None
    model: str | None = None
    random_init: bool = False
    frames: int | None = None
    method: str = "earlytom"
    retain_ratio: float | None = None
    trusted_key: Path | None = None  # an ed25519 public key the engine directory must be signed with

    def __post_init__(self) -> None:
        if self.engine is None and self.model is None:
            raise ValueError("pass --engine DIR (an engine directory) or --model NAME (the eager backend)")
        if self.engine is None and self.trusted_key is not None:
            raise ValueError("--require-signature applies to an --engine directory; the eager model has nothing signed")
        if self.engine is not None and self.random_init:
            raise ValueError("--random-init is fixed when the engine is built; pass it to build_engine")

    @property
    def default_name(self) -> str:
        """The served model name unless --served-model-name says otherwise."""
        return self.model if self.model is not None else Path(self.engine).name

    def load(self) -> Pipeline:
        if self.engine is not None:
            return Pipeline.from_engine_dir(
                self.engine,
                model=self.model,
                retain_ratio=self.retain_ratio,
                num_frames=self.frames,
                method=self.method,
                trusted_key=self.trusted_key,
            )
        options = {"num_frames": self.frames} if self.frames is not None else {}
        if self.retain_ratio is not None:
            options["config"] = EarlyTomConfig(retain_ratio=self.retain_ratio)
        return Pipeline.from_pretrained(self.model, random_init=self.random_init, method=self.method, **options)

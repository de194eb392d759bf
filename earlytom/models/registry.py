"""Model names -> a loaded LLaVA-OneVision model, its tokenizer, chat template and preprocessor settings.

A name is an alias below, `tiny` (random weights, for tests and demos), a Hugging Face id, or a local
checkpoint directory. Weights come from the directory or the Hugging Face cache (downloaded when a network
exists); `random_init` builds the exact architecture from the config shipped in this package (aliases) or
from the checkpoint's config.json, with random weights: honest for latency, never for accuracy.
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
from transformers.utils import cached_file

from earlytom.models.tokenizer import LLAVA_OV_CHAT_TEMPLATE, byte_level_tokenizer

ALIASES = {
    "llava-ov-0.5b": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "llava-ov-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "llava-ov-72b": "llava-hf/llava-onevision-qwen2-72b-ov-hf",
    "llava-video-7b": "llava-hf/LLaVA-Video-7B-Qwen2-hf",
}
TINY = "tiny"
PREPROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
NOT_ARCHITECTURE = {"_name_or_path", "dtype", "torch_dtype", "transformers_version", "architectures"}
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json")


class ModelNotFound(ValueError):
    """A model name that is no alias, no local checkpoint and not in the Hugging Face cache."""


@dataclass(frozen=True)
class Preprocess:
    """How frames become pixels: resize to size x size, scale by rescale, then (x - mean) / std per channel."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Preprocess":
        fields = json.loads(path.read_text())
        return cls(size=fields["size"], mean=tuple(fields["mean"]), std=tuple(fields["std"]), rescale=fields["rescale"])


@dataclass
class LoadedModel:
    name: str  # what the user asked for
    source: str  # HF id or directory the weights (or, with random_init, the config) came from
    model: LlavaOnevisionForConditionalGeneration
    tokenizer: object  # a transformers tokenizer
    chat_template: str
    preprocess: Preprocess
    random_init: bool
    notes: list[str]  # what the user should know (random weights, stand-in tokenizer)

    @property
    def config_hash(self) -> str:
        """SHA-256 of the model's architecture (its config less paths, dtypes and versions), to tell engine
        directories built for different models apart."""
        text = json.dumps(architecture(self.model.config.to_dict()), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def architecture(config: dict) -> dict:
    """A config dict without the fields that say where or how it was saved rather than what the model is."""
    return {
        key: architecture(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if key not in NOT_ARCHITECTURE
    }


def known_names() -> list[str]:
    return [*ALIASES, TINY]


def packaged_config(name: str) -> LlavaOnevisionConfig:
    """The architecture of an alias (published numbers) or of `tiny`, shipped in earlytom/models/configs/."""
    text = resources.files("earlytom.models").joinpath("configs", f"{name}.json").read_text()
    fields = {k: v for k, v in json.loads(text).items() if k not in ("model_type", "architectures")}
    return LlavaOnevisionConfig(**fields)


def resolve(name: str) -> str:
    """An alias -> its HF id; a local directory or an `org/name` id -> itself; anything else -> ModelNotFound."""
    if name in ALIASES:
        return ALIASES[name]
    if Path(name).is_dir():
        return str(Path(name).resolve())
    if name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/")):
        return name
    raise ModelNotFound(
        f"unknown model {name!r}: use one of {', '.join(known_names())}, a Hugging Face id (org/name) "
        "or a local checkpoint directory"
    )


def checkpoint_file(source: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of `filenames` present in a local directory or the HF cache (None if none is)."""
    for filename in filenames:
        path = cached_file(
            source, filename, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False
        )
        if path:
            return Path(path)
    return None


def read_preprocess(source: str | None, image_size: int) -> Preprocess:
    """The checkpoint's resize and normalisation; SigLIP's (size from the config, mean = std = 0.5) without one."""
    path = checkpoint_file(source, PREPROCESSOR_FILES) if source else None
    if path is None:
        return Preprocess(size=image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    settings = json.loads(path.read_text())
    size = settings.get("size", {})
    size = size.get("height", size.get("shortest_edge", image_size)) if isinstance(size, dict) else size
    return Preprocess(
        size=int(size),
        mean=tuple(settings.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(settings.get("image_std", (0.5, 0.5, 0.5))),
        rescale=float(settings.get("rescale_factor", 1 / 255)),
    )


def read_chat_template(source: str | None) -> str:
    """The processor's chat template from the checkpoint, or LLaVA-OneVision's own format."""
    path = checkpoint_file(source, CHAT_TEMPLATE_FILES) if source else None
    if path is None:
        return LLAVA_OV_CHAT_TEMPLATE
    if path.suffix == ".jinja":
        return path.read_text()
    return json.loads(path.read_text()).get("chat_template", LLAVA_OV_CHAT_TEMPLATE)


def load_model(
    name: str, *, random_init: bool = False, dtype: torch.dtype = torch.float32, seed: int = 0
) -> LoadedModel:
    """Load `name` for inference (eval mode, `dtype`). `tiny` always has random weights."""
    random_init = random_init or name == TINY
    notes = []
    if name in ALIASES or name == TINY:
        source = ALIASES.get(name, TINY)
        config = packaged_config(name) if random_init else None
    else:
        source = resolve(name)
        config = None
    try:
        if random_init:
            config = config or AutoConfig.from_pretrained(source)
            torch.manual_seed(seed)
            model = LlavaOnevisionForConditionalGeneration(config)
            notes.append(f"{name}: random weights (--random-init): timings are real, answers are noise")
        else:
            model = LlavaOnevisionForConditionalGeneration.from_pretrained(
                source, dtype=dtype, attn_implementation="sdpa"
            )
    except OSError as error:
        raise ModelNotFound(
            f"cannot load {name!r} ({source}): not a checkpoint directory and not in the Hugging Face cache, "
            f"and it could not be downloaded ({str(error).splitlines()[0]}). Download it on a connected machine "
            "(huggingface-cli download ...), pass a local directory, or use --random-init for latency work"
        ) from error
    model = model.to(dtype).eval()
    # A packaged architecture has no checkpoint files: never reach for the hub on its behalf.
    hub_source = None if name in ALIASES and random_init or name == TINY else source
    try:
        tokenizer = AutoTokenizer.from_pretrained(hub_source) if hub_source else None
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is None:
        tokenizer = byte_level_tokenizer()
        notes.append(f"{name}: no tokenizer in the checkpoint; using the built-in byte-level tokenizer")
    vision = model.config.vision_config
    return LoadedModel(
        name=name,
        source=source,
        model=model,
        tokenizer=tokenizer,
        chat_template=read_chat_template(hub_source),
        preprocess=read_preprocess(hub_source, vision.image_size),
        random_init=random_init,
        notes=notes,
    )

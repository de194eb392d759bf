"""Model families by the checkpoint's `model_type`, and model names -> a loaded model with its tokenizer, chat
template and processor.

A name is an alias of a registered family (`tiny`: random weights, for tests and demos), a Hugging Face id, or a
local checkpoint directory. Weights come from the directory or the Hugging Face cache (downloaded when a network
exists); `random_init` builds the exact architecture from the config shipped in this package (aliases) or from the
checkpoint's config.json, with random weights: honest for latency, never for accuracy.
"""

import hashlib
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import cached_file

from earlytom.compress import EarlyTomConfig
from earlytom.models import llava_onevision, qwen2_5_vl
from earlytom.models.backbone import Family, VisionDims
from earlytom.models.tokenizer import byte_level_tokenizer

FAMILIES: dict[str, Family] = {}  # model_type -> family
PREPROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
NOT_ARCHITECTURE = {"_name_or_path", "dtype", "torch_dtype", "transformers_version", "architectures"}
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json")


class ModelNotFound(ValueError):
    """A model name that is no alias, no local checkpoint and not in the Hugging Face cache."""


class UnknownFamily(ValueError):
    """A checkpoint whose model_type no registered family handles."""


def register(family: Family) -> Family:
    """Make `family` the one for checkpoints of its model_type (and its aliases known names)."""
    FAMILIES[family.model_type] = family
    return family


def family_of(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise UnknownFamily(
            f"model_type {model_type!r} is not supported; supported model types: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def alias_family(name: str) -> Family | None:
    return next((f for f in FAMILIES.values() if name in f.aliases), None)


def known_names() -> list[str]:
    return [alias for family in FAMILIES.values() for alias in family.aliases]


@dataclass
class LoadedModel:
    name: str  # what the user asked for
    source: str  # HF id or directory the weights (or, with random_init, the config) came from
    family: Family
    model: torch.nn.Module  # the family's transformers model
    tokenizer: object  # a transformers tokenizer
    chat_template: str
    processor: object  # the family's Processor
    random_init: bool
    notes: list[str] = field(default_factory=list)  # what the user should know (random weights, stand-in tokenizer)

    @property
    def config_hash(self) -> str:
        """SHA-256 of the model's architecture (its config less paths, dtypes and versions), to tell engine
        directories built for different models apart."""
        text = json.dumps(architecture(self.model.config.to_dict()), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def dims(self) -> VisionDims:
        return self.family.dims(self.model.config, self.processor)

    def backbone(self):
        """The encoder stages over this model (an nn.Module sharing its weights)."""
        return self.family.backbone(self.model, self.processor)

    def at_resolution(self, resolution: tuple[int, int], *, for_engine: bool) -> "LoadedModel":
        """This model with its processor at frame size `resolution` (height, width), as the family allows it for an
        engine or for the eager path (ValueError naming the valid sizes). A processor of one fixed size takes only
        that size."""
        resolution = tuple(resolution)
        resized = getattr(self.processor, "resized", None)
        if resized is not None:
            return replace(self, processor=resized(resolution, for_engine=for_engine))
        if resolution != tuple(self.processor.frame_size):
            height, width = self.processor.frame_size
            raise ValueError(
                f"resolution {resolution[0]} x {resolution[1]}: {self.name} takes frames of {height} x {width} only; "
                f"use --resolution {height}x{width} or leave it out"
            )
        return self

    def resolve(self, config: EarlyTomConfig | dict) -> EarlyTomConfig:
        """`config` with this model's defaults filled in (its family's merge layers, the inner merge's layer for its
        decoder depth), checked against the model: the encoder's depth, the layers its family compresses after.
        A dict holds the user's EarlyTomConfig fields (None: default): the family's default parameters (e.g. Qwen's
        r = 0.15) fill what it leaves out; an EarlyTomConfig is already whole and is taken as it is."""
        if isinstance(config, dict):
            config = family_config(self.family, config)
        model_config = self.model.config
        decoder_layers = model_config.get_text_config().num_hidden_layers
        default = self.family.default_merge_layers(config.variant, model_config)
        resolved = config.for_model(self.dims.encoder_layers, decoder_layers, default_layers=default)
        valid = self.family.valid_merge_layers(model_config)
        if valid is not None and not set(resolved.merge_layers) <= set(valid):
            raise ValueError(
                f"merge_layers = {resolved.merge_layers}: this model compresses only after layers {tuple(valid)}"
            )
        return resolved


def family_config(family: Family, fields: dict) -> EarlyTomConfig:
    """The EarlyTomConfig of the user's `fields` (None: default) over `family`'s default parameters, over the
    variant's defaults."""
    given = {name: value for name, value in fields.items() if value is not None}
    return EarlyTomConfig(**(dict(family.default_params) | given))


def architecture(config: dict) -> dict:
    """A config dict without the fields that say where or how it was saved rather than what the model is."""
    return {
        key: architecture(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if key not in NOT_ARCHITECTURE
    }


def packaged_config(name: str):
    """The architecture of an alias (published numbers, or a tiny one), shipped in earlytom/models/configs/."""
    text = resources.files("earlytom.models").joinpath("configs", f"{name}.json").read_text()
    fields = {k: v for k, v in json.loads(text).items() if k != "architectures"}
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def packaged_dims(name: str) -> VisionDims:
    """The vision dims of an alias, from its packaged config and the family's default processor."""
    config = packaged_config(name)
    family = family_of(config.model_type)
    return family.dims(config, family.processor(config, None))


def architecture_of(name: str, *, download: bool = True) -> tuple:
    """(config, vision dims) of the model `name` without loading weights: an alias's packaged architecture, or a
    checkpoint's config.json and preprocessor settings (a directory or the Hugging Face cache; the config alone
    downloaded when `download` and not cached)."""
    if alias_family(name) is not None:
        return packaged_config(name), packaged_dims(name)
    source = resolve(name)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=not download)
    except OSError as error:
        where = "not in the Hugging Face cache" + (" and not downloadable" if download else "")
        raise ModelNotFound(
            f"cannot read the config of {name!r} ({source}): not a checkpoint directory, {where} "
            f"({str(error).splitlines()[0]}); pass a checkpoint directory or one of {', '.join(known_names())}"
        ) from error
    family = family_of(config.model_type)
    return config, family.dims(config, family.processor(config, preprocessor_settings(source)))


def resolve(name: str) -> str:
    """An alias -> its HF id; a local directory or an `org/name` id -> itself; anything else -> ModelNotFound."""
    family = alias_family(name)
    if family is not None:
        return family.aliases[name] or name
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


def preprocessor_settings(source: str | None) -> dict | None:
    """The checkpoint's (video) preprocessor config, None without one."""
    path = checkpoint_file(source, PREPROCESSOR_FILES) if source else None
    return None if path is None else json.loads(path.read_text())


def read_chat_template(source: str | None, default: str) -> str:
    """The processor's chat template from the checkpoint, or the family's own `default`."""
    path = checkpoint_file(source, CHAT_TEMPLATE_FILES) if source else None
    if path is None:
        return default
    if path.suffix == ".jinja":
        return path.read_text()
    return json.loads(path.read_text()).get("chat_template", default)


def load_model(
    name: str, *, random_init: bool = False, dtype: torch.dtype = torch.float32, seed: int = 0
) -> LoadedModel:
    """Load `name` for inference (eval mode, `dtype`). An alias without a Hugging Face id (`tiny`) always has
    random weights."""
    alias = alias_family(name)
    packaged_only = alias is not None and alias.aliases[name] is None
    random_init = random_init or packaged_only
    source = resolve(name)
    # A packaged architecture has no checkpoint files: never reach for the hub on its behalf.
    hub_source = None if alias is not None and random_init else source
    notes = []
    try:
        config = packaged_config(name) if hub_source is None else AutoConfig.from_pretrained(source)
        family = family_of(config.model_type)
        if random_init:
            torch.manual_seed(seed)
            model = family.model_class(config)
            notes.append(f"{name}: random weights (--random-init): timings are real, answers are noise")
        else:
            model = family.model_class.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    except OSError as error:
        raise ModelNotFound(
            f"cannot load {name!r} ({source}): not a checkpoint directory and not in the Hugging Face cache, "
            f"and it could not be downloaded ({str(error).splitlines()[0]}). Download it on a connected machine "
            "(huggingface-cli download ...), pass a local directory, or use --random-init for latency work"
        ) from error
    model = model.to(dtype).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(hub_source) if hub_source else None
    except (OSError, ValueError):
        tokenizer = None
    chat_template = read_chat_template(hub_source, family.chat_template)
    if tokenizer is None:
        tokenizer = byte_level_tokenizer(family.special_tokens, chat_template, family.eos_token)
        notes.append(f"{name}: no tokenizer in the checkpoint; using the built-in byte-level tokenizer")
    return LoadedModel(
        name=name,
        source=source,
        family=family,
        model=model,
        tokenizer=tokenizer,
        chat_template=chat_template,
        processor=family.processor(model.config, preprocessor_settings(hub_source)),
        random_init=random_init,
        notes=notes,
    )


register(llava_onevision.FAMILY)
register(qwen2_5_vl.FAMILY)

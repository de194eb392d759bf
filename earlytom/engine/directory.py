"""An engine directory opened for running: verified once here, then the backends read what they need from the
`EngineDir` (manifest, the family's processor and decoder loading, tokenizer, visual suffix, graph paths) and never
climb back into the manifest or the file layout."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from earlytom.engine.layout import DECODER, DECODER_TRTLLM, PREPROCESSOR, TOKENIZER, VISUAL_SUFFIX
from earlytom.engine.manifest import EngineDirError, Manifest, read_manifest
from earlytom.engine.signing import public_key, verify_signature
from earlytom.engine.staging import recover
from earlytom.models.backbone import Family
from earlytom.models.registry import UnknownFamily, family_of


@dataclass
class EngineDir:
    """A verified engine directory: its manifest, the model family it was built for, the family's processor,
    the tokenizer (with the chat template) and the visual suffix embeddings [s, D'] (float32)."""

    path: Path
    manifest: Manifest
    family: Family
    processor: object
    tokenizer: object
    suffix: torch.Tensor
    notes: list[str] = field(default_factory=list)

    @property
    def decoder_path(self) -> Path:
        return self.path / DECODER

    @property
    def trtllm_path(self) -> Path:
        return self.path / DECODER_TRTLLM

    def load_decoder(self, dtype: torch.dtype):
        """The language model saved in the directory (the family's format), in `dtype`, in eval mode."""
        return self.family.load_decoder(self.decoder_path, dtype).eval()


def open_dir(directory: str | Path, *, model: str | None = None, trusted_key: str | Path | None = None) -> EngineDir:
    """The engine directory at `directory`, after finishing any interrupted replacement of it and verifying its
    manifest (refused if tampered, incomplete, built for another `model` or for a model family this earlytom does
    not have, or, with `trusted_key` (a PEM ed25519 public key file), not signed by that key)."""
    directory = Path(directory)
    recover(directory)
    if trusted_key is not None:
        verify_signature(directory, public_key(trusted_key))
    manifest = read_manifest(directory, expect_model=model)
    try:
        family = family_of(manifest.vision.family)
    except UnknownFamily as error:
        raise EngineDirError(f"{directory}: {error}; upgrade earlytom or rebuild the directory") from None
    try:
        settings = json.loads((directory / PREPROCESSOR).read_text())
        processor = family.processor_from_dict(settings)
    except (ValueError, KeyError, TypeError) as error:
        raise EngineDirError(f"{directory}/{PREPROCESSOR} is invalid ({error}); rebuild it with build_engine") from None
    tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER)
    suffix = load_file(directory / VISUAL_SUFFIX)["suffix"].float()
    return EngineDir(directory, manifest, family, processor, tokenizer, suffix, list(manifest.notes))

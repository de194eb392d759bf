"""Loading real checkpoints the way users have them: a local directory, or the Hugging Face cache offline."""

import json
import os
import subprocess
import sys

import torch

from earlytom.models.registry import load_model


def save_checkpoint(tiny, directory):
    """Write the tiny model as a full checkpoint: weights, config, tokenizer, preprocessor settings."""
    tiny.model.save_pretrained(directory)
    tiny.tokenizer.save_pretrained(directory)
    settings = {"size": {"height": 64, "width": 64}, "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.4]}
    (directory / "preprocessor_config.json").write_text(json.dumps(settings))
    return directory


def test_local_directory_loads_weights_tokenizer_and_preprocessor(tiny, tmp_path):
    loaded = load_model(str(save_checkpoint(tiny, tmp_path / "ckpt")))
    assert not loaded.random_init and loaded.notes == []
    assert loaded.processor.size == 64 and loaded.processor.mean == (0.4, 0.5, 0.6)
    for (name, a), (_, b) in zip(tiny.model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.tokenizer("hi <|im_end|>").input_ids == tiny.tokenizer("hi <|im_end|>").input_ids
    assert loaded.config_hash == tiny.config_hash


def test_hf_cache_works_offline(tiny, tmp_path):
    """A checkpoint laid out as huggingface_hub caches it loads by its id with the hub unreachable."""
    snapshot = tmp_path / "hub" / "models--acme--tiny-ov" / "snapshots" / ("0" * 40)
    save_checkpoint(tiny, snapshot)
    (tmp_path / "hub" / "models--acme--tiny-ov" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-ov" / "refs" / "main").write_text("0" * 40)
    env = os.environ | {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = "from earlytom.models.registry import load_model; m = load_model('acme/tiny-ov'); print(m.processor.size)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "64"


def test_missing_hub_model_is_a_clear_error(tmp_path):
    env = os.environ | {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "earlytom.cli", "run", "--model", "acme/absent", "--video", "x.mp4", "--prompt", "x"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "not in the Hugging Face cache" in done.stderr and "--random-init" in done.stderr
    assert "Traceback" not in done.stderr


def test_random_init_alias_builds_the_published_architecture():
    loaded = load_model("llava-ov-0.5b", random_init=True)
    assert loaded.random_init and any("random weights" in note for note in loaded.notes)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert 0.85e9 < n_params < 0.95e9  # LLaVA-OV-0.5B: SigLIP-so400m (26 layers) + Qwen2-0.5B

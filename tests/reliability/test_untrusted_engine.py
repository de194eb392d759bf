"""Issue 27: an engine directory from someone else, crafted to be self-consistent (every file's hash and the
manifest's own digest recomputed by hand), still never makes the loader or ONNX Runtime open a file outside it:
external data at an absolute path or `..`, a symbolic link anywhere (a tokenizer file, a directory), and a
hand-edited plain field of manifest.json are each refused with one EngineDirError naming the directory."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import onnx
import pytest
from manifest_digest import redigested
from onnx.external_data_helper import convert_model_to_external_data
from reliability_support import assert_one_error

from earlytom.cli import main as earlytom_main
from earlytom.engine.manifest import EngineDirError, read_manifest
from earlytom.runtime.pipeline import Pipeline

HEAD = "vision_head.onnx"


def rehash(directory: Path) -> None:
    """Recompute manifest.json as a forger would: every file's SHA-256 (links followed) and the digest of the
    canonical form (compact JSON, sorted keys, without the digest), all with hashlib."""
    data = json.loads((directory / "manifest.json").read_text())
    walk = os.walk(directory, followlinks=True)  # through linked directories too
    files = sorted((Path(root) / f).relative_to(directory).as_posix() for root, _, names in walk for f in names)
    files.remove("manifest.json")
    data["artifacts"] = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in files}
    (directory / "manifest.json").write_text(json.dumps(redigested(data), indent=1))


def external_head(directory: Path, location: str) -> None:
    """vision_head.onnx with its weights moved to head.data in the directory, then every tensor's `location`
    rewritten to `location`."""
    model = onnx.load(directory / HEAD)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="head.data", size_threshold=1024)
    onnx.save_model(model, directory / HEAD)
    model = onnx.load(directory / HEAD, load_external_data=False)
    moved = 0
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value, moved = location, moved + 1
    assert moved > 0  # the crafted graph really points somewhere else
    (directory / HEAD).write_bytes(model.SerializeToString())


def refused(directory: Path, *needles: str) -> str:
    with pytest.raises(EngineDirError) as caught:
        Pipeline.from_engine_dir(directory)
    message = str(caught.value)
    assert str(directory) in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_weights_moved_inside_the_directory_still_load(engine_copy):
    """The crafting itself is sound: external data at a listed file of the directory loads and runs."""
    external_head(engine_copy, "head.data")
    rehash(engine_copy)
    assert Pipeline.from_engine_dir(engine_copy).backend.manifest.max_frames == 4


@pytest.mark.parametrize("where", ["/etc/hostname", "../head.data", "sub/../../head.data", "absent.data"])
def test_external_data_outside_the_directory_is_refused(engine_copy, where):
    external_head(engine_copy, where)
    shutil.copy(engine_copy / "head.data", engine_copy.parent / "head.data")  # a real file where `..` points
    rehash(engine_copy)
    read_manifest(engine_copy)  # every hash matches: only the location gives it away
    refused(engine_copy, HEAD, repr(where), "not a file of the engine directory")


def test_external_data_outside_is_one_error_line(engine_copy, clip, capsys):
    external_head(engine_copy, "/etc/hostname")
    rehash(engine_copy)
    code = earlytom_main(["run", "--engine", str(engine_copy), "--video", str(clip), "--prompt", "x"])
    assert code == 2
    assert_one_error(capsys.readouterr().err, "/etc/hostname", "not a file of the engine directory")


@pytest.mark.parametrize("link", ["tokenizer file", "tokenizer directory"])
def test_symlinked_tokenizer_is_refused(engine_copy, tmp_path, link):
    outside = tmp_path / "outside"
    shutil.copytree(engine_copy / "tokenizer", outside)
    if link == "tokenizer file":
        (engine_copy / "tokenizer" / "tokenizer_config.json").unlink()
        (engine_copy / "tokenizer" / "tokenizer_config.json").symlink_to(outside / "tokenizer_config.json")
        name = "tokenizer/tokenizer_config.json"
    else:
        shutil.rmtree(engine_copy / "tokenizer")
        (engine_copy / "tokenizer").symlink_to(outside, target_is_directory=True)
        name = "tokenizer"
    rehash(engine_copy)
    message = refused(engine_copy, f"{engine_copy}/{name} is a symbolic link")
    with pytest.raises(EngineDirError, match="is a symbolic link"):
        read_manifest(engine_copy)
    assert message.count("symbolic link") == 1


def test_hand_edited_max_frames_is_refused(engine_copy):
    text = (engine_copy / "manifest.json").read_text()
    assert text.count('"max_frames": 4,') == 1
    (engine_copy / "manifest.json").write_text(text.replace('"max_frames": 4,', '"max_frames": 8,'))
    refused(engine_copy, "manifest.json was edited after it was written", "build_engine")


def test_removed_digest_is_refused(engine_copy):
    data = json.loads((engine_copy / "manifest.json").read_text())
    data.pop("manifest_sha256")
    (engine_copy / "manifest.json").write_text(json.dumps(data))
    refused(engine_copy, "lacks the key 'manifest_sha256'")


def test_reformatted_manifest_still_loads(engine_copy):
    """The digest is over the canonical form: other indentation and key order are the same manifest."""
    data = json.loads((engine_copy / "manifest.json").read_text())
    (engine_copy / "manifest.json").write_text(json.dumps(dict(reversed(data.items())), indent=7))
    assert read_manifest(engine_copy).max_frames == 4


def test_huge_manifest_is_refused_unread(engine_copy):
    with (engine_copy / "manifest.json").open("ab") as f:
        f.truncate(200 << 20)  # sparse: 200 MiB of NULs after the JSON
    message = refused(engine_copy, "manifest.json is 209715200 bytes")
    assert "rebuild" in message


def test_nested_file_named_manifest_is_not_hidden(engine_copy):
    """Only the top-level manifest.json is the manifest: one deeper is an unlisted file like any other."""
    (engine_copy / "decoder" / "manifest.json").write_text("{}")
    refused(engine_copy, "does not list", "decoder/manifest.json")
    os.remove(engine_copy / "decoder" / "manifest.json")
    read_manifest(engine_copy)

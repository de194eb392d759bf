"""Class 2 of issue 12: an altered engine directory never loads. Every key of the manifest removed or retyped (the
cases are generated from the Manifest dataclasses, recursively), unknown keys, untracked files, path traversal,
an emptied artifact list, JSON of the wrong type, links: each is an EngineDirError naming the directory and the
fix, raised before anything else is read, never a traceback of another type."""

import dataclasses
import json
import os
import shutil
import types
import typing
from pathlib import Path

import pytest
from manifest_digest import redigested

from earlytom.cli import main as earlytom_main
from earlytom.engine.manifest import EngineDirError, Manifest, read_manifest
from earlytom.runtime.pipeline import Pipeline

FIX = "build_engine"


def key_paths(kind, prefix=()) -> list[tuple[tuple, object]]:
    """(path of keys, annotation) of every field of the dataclass `kind`, recursively (an optional dataclass
    counts as its dataclass)."""
    out = []
    for field, hint in typing.get_type_hints(kind).items():
        path = (*prefix, field)
        out.append((path, hint))
        optional = typing.get_origin(hint) in (types.UnionType, typing.Union)
        inner = [a for a in typing.get_args(hint) if optional and dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(hint) or inner:
            out += key_paths(hint if dataclasses.is_dataclass(hint) else inner[0], path)
    return out


# Optional sections: tensorrt is None in an ONNX build, memory_plan without build_engine --target-gpu.
KEYS = [(path, hint) for path, hint in key_paths(Manifest) if path[0] not in ("tensorrt", "memory_plan")]
# One value of another JSON type for each kind of field.
WRONG = {str: 7, int: "7", float: "x", bool: "yes", dict: [], tuple: {"a": 1}}


def wrong_value(hint):
    origin = typing.get_origin(hint) or hint
    if dataclasses.is_dataclass(hint) or any(dataclasses.is_dataclass(a) for a in typing.get_args(hint)):
        return [1, 2]
    return WRONG.get(origin, 3.5)


def edited(manifest: dict, path: tuple, value=None, *, delete=False) -> dict:
    data = json.loads(json.dumps(manifest))
    node = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    return data


@pytest.fixture(scope="module")
def original(engine) -> dict:
    return json.loads((engine / "manifest.json").read_text())


def write(directory: Path, data) -> None:
    """`data` as the manifest, with its digest recomputed (by hand) if it is an object: a crafted manifest that is
    self-consistent, so the field itself is what must be refused."""
    (directory / "manifest.json").write_text(json.dumps(redigested(data) if isinstance(data, dict) else data))


def assert_refused(directory: Path, *needles: str) -> EngineDirError:
    """read_manifest and Pipeline.from_engine_dir both refuse `directory` with an EngineDirError naming it and
    the fix (and every needle)."""
    with pytest.raises(EngineDirError) as caught:
        read_manifest(directory)
    message = str(caught.value)
    assert str(directory) in message and FIX in message, message
    for needle in needles:
        assert needle in message, message
    with pytest.raises(EngineDirError):
        Pipeline.from_engine_dir(directory)
    return caught.value


@pytest.fixture(scope="module")
def scratch(engine, tmp_path_factory) -> Path:
    """One copy of the engine the manifest cases edit in turn (copying per case costs more than the checks)."""
    return shutil.copytree(engine, tmp_path_factory.mktemp("fuzz") / "engine")


@pytest.mark.parametrize("path, hint", KEYS, ids=[".".join(p) for p, _ in KEYS])
def test_removed_key_is_refused(scratch, original, path, hint):
    write(scratch, edited(original, path, delete=True))
    assert_refused(scratch)


@pytest.mark.parametrize("path, hint", KEYS, ids=[".".join(p) for p, _ in KEYS])
def test_retyped_key_is_refused(scratch, original, path, hint):
    write(scratch, edited(original, path, wrong_value(hint)))
    assert_refused(scratch, path[-1])


@pytest.mark.parametrize("section", ["sm_90", [], {"tensorrt": "10.0"}, {"tensorrt": 10, "tensorrt_llm": "x"}])
def test_tensorrt_section_retyped_is_refused(scratch, original, section):
    write(scratch, original | {"tensorrt": section})
    assert_refused(scratch, "tensorrt")


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"unknown": 1}, "unknown keys"),
        ({"model": {"name": "tiny", "extra": 1}}, "unknown keys"),
        ({"artifacts": {}}, "artifacts lacks"),
        ({"graphs": []}, "graphs"),
        ({"max_frames": 0}, "max_frames"),
        ({"max_frames": -4}, "max_frames"),
        ({"max_frames": 4.0}, "max_frames"),
        ({"max_frames": True}, "max_frames"),
        ({"backend": "cuda"}, "backend"),
        ({"dtype": "int4"}, "dtype"),
        ({"earlytom": {"retain_ratio": "nan"}}, "earlytom"),
        ({"earlytom": {"variant": "official", "merge_layers": [9]}}, "merge_layers"),
        ({"earlytom": {"bogus": 1}}, "earlytom"),
        ({"tools": {"onnxruntime": "not-a-version"}}, "onnxruntime"),
        ({"format": "earlytom-engine/1"}, "format"),
        ({"format": None}, "format"),
    ],
)
def test_bad_values_are_refused(scratch, original, change, needle):
    write(scratch, original | change)
    assert_refused(scratch, needle)


@pytest.mark.parametrize("data", [[], "manifest", 42, None, [{"format": "earlytom-engine/4"}]], ids=repr)
def test_wrong_json_type_is_refused(scratch, data):
    write(scratch, data)
    assert_refused(scratch)


@pytest.mark.parametrize("text", ["", "{", "\xff\xfe", '{"format": "earlytom-engine/4"'])
def test_corrupt_json_is_refused(scratch, text):
    (scratch / "manifest.json").write_bytes(text.encode("latin-1"))
    assert_refused(scratch, "corrupt")


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "", "dir\\..\\x"])
def test_path_traversal_in_artifacts_is_refused(scratch, original, name):
    write(scratch, original | {"artifacts": original["artifacts"] | {name: "0" * 64}})
    assert_refused(scratch, "outside the engine directory")


@pytest.mark.parametrize("name", ["../vision_head", "/tmp/vision_head"])
def test_path_traversal_in_graphs_is_refused(scratch, original, name):
    graphs = [dict(original["graphs"][0], name=name), *original["graphs"][1:]]
    write(scratch, original | {"graphs": graphs})
    assert_refused(scratch, "outside the engine directory")


@pytest.fixture
def engine_copy(engine, tmp_path) -> Path:
    return shutil.copytree(engine, tmp_path / "engine")


@pytest.mark.parametrize("extra", ["extra.onnx", "tokenizer/added_tokens.json", "decoder/sub/x.bin", ".hidden"])
def test_untracked_files_are_refused(engine_copy, extra):
    (engine_copy / extra).parent.mkdir(parents=True, exist_ok=True)
    (engine_copy / extra).write_text('{"<video>": 3}')
    assert_refused(engine_copy, "does not list", extra)


@pytest.mark.parametrize("link", ["file", "dir", "dangling", "replaces an artifact", "manifest"])
def test_symlinks_are_refused(engine_copy, tmp_path, link):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_text("x")
    if link == "file":
        (engine_copy / "tokenizer" / "extra.json").symlink_to(tmp_path / "outside" / "f")
    elif link == "dir":
        (engine_copy / "more").symlink_to(tmp_path / "outside")
    elif link == "dangling":
        (engine_copy / "gone").symlink_to(tmp_path / "nowhere")
    elif link == "replaces an artifact":  # same bytes, but a link: the directory no longer holds its own files
        moved = tmp_path / "outside" / "preprocessor.json"
        os.rename(engine_copy / "preprocessor.json", moved)
        (engine_copy / "preprocessor.json").symlink_to(moved)
    else:
        os.rename(engine_copy / "manifest.json", tmp_path / "outside" / "manifest.json")
        (engine_copy / "manifest.json").symlink_to(tmp_path / "outside" / "manifest.json")
    assert_refused(engine_copy)


def test_manifest_that_is_a_directory_is_refused(engine_copy):
    (engine_copy / "manifest.json").unlink()
    (engine_copy / "manifest.json").mkdir()
    assert_refused(engine_copy, "not an engine directory")


def test_cli_shows_one_error_line(engine_copy, clip, capsys):
    write(engine_copy, [])
    assert earlytom_main(["run", "--engine", str(engine_copy), "--video", str(clip), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err and str(engine_copy) in lines[0]


def test_the_original_still_loads(engine):
    """The cases above break copies only: the untouched directory passes every check."""
    assert read_manifest(engine).max_frames == 4

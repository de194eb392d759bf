"""The engine directory's manifest and file verification (earlytom/engine/manifest.py) on small hand-made
directories: no model is built, so these run in milliseconds (and under mutmut, for every mutant of the module)."""

import hashlib
import json
import os
from dataclasses import replace

import pytest
from manifest_digest import redigested

from earlytom.compress import EarlyTomConfig
from earlytom.engine.layout import FORMAT, MANIFEST, vision_chain
from earlytom.engine.manifest import (
    EngineDirError,
    IncompatibleEngine,
    Manifest,
    ModelInfo,
    TensorRTInfo,
    check_compatible,
    check_relative,
    files_on_disk,
    load_manifest,
    parse,
    read_manifest,
    sha256,
    verify_files,
    write_manifest,
)
from earlytom.environment import tool_versions
from earlytom.models.backbone import VisionDims

FILES = {
    "vision_head.onnx": b"head",
    "vision_tail.onnx": b"tail",
    "decoder/model.safetensors": b"weights" * 100,
    "decoder/config.json": b"{}",
    "visual_suffix.safetensors": b"suffix",
    "preprocessor.json": b"{}",
    "tokenizer/tokenizer_config.json": b"{}",
}


def fields(**changes) -> dict:
    base = {
        "model": ModelInfo("tiny", "builtin:tiny", "c" * 64, True),
        "earlytom": EarlyTomConfig(variant="paper", merge_layers=(0,)).to_dict(),
        "max_frames": 4,
        "vision": VisionDims("llava_onevision", (72, 72), 1, (3, 72, 72), 81, 32, 4, 4, 25, 64, 1),
        "graphs": vision_chain("paper", (0,), 4),
        "backend": "onnxruntime",
        "dtype": "fp32",
        "plugin_archs": (),
        "verification_max_rel_error": {"vision_head": {"hidden_0": 1e-6}, "vision_tail": {"tokens": 0}},
        "notes": ("a note",),
        "created": "2026-01-01T00:00:00+00:00",
    }
    return base | changes


@pytest.fixture
def directory(tmp_path):
    root = tmp_path / "engine"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    write_manifest(root, **fields())
    return root


def raw(directory) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def rewrite(directory, data) -> None:
    (directory / MANIFEST).write_text(json.dumps(data))


def test_written_manifest_reads_back_equal(directory):
    manifest = read_manifest(directory)
    assert manifest == Manifest(
        format=FORMAT,
        tools=tool_versions(),
        artifacts={name: hashlib.sha256(data).hexdigest() for name, data in sorted(FILES.items())},
        **fields(),
    )
    assert manifest.tensorrt is None and manifest.config == EarlyTomConfig(variant="paper", merge_layers=(0,))
    assert load_manifest(str(directory)) == manifest  # a str path works too
    assert raw(directory)["format"] == "earlytom-engine/4"
    text = (directory / MANIFEST).read_text()
    assert text == manifest.to_json() and text.endswith("\n}\n") and '\n  "format": ' in text  # for people to read


def test_tensorrt_section_round_trips(tmp_path):
    for name, data in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    info = TensorRTInfo("11.1.0", "1.0", "sm_89")
    written = write_manifest(tmp_path, **fields(tensorrt=info, backend="tensorrt"))
    assert read_manifest(tmp_path).tensorrt == info == written.tensorrt


def test_sha256_of_a_multi_block_file(tmp_path):
    data = os.urandom((1 << 20) * 2 + 17)  # three 1 MiB reads
    (tmp_path / "big").write_bytes(data)
    assert sha256(tmp_path / "big") == hashlib.sha256(data).hexdigest()


def test_files_on_disk_lists_every_file_but_the_manifest(directory):
    (directory / "sub" / "deeper").mkdir(parents=True)
    (directory / "sub" / "deeper" / "z.bin").write_bytes(b"z")
    (directory / "a.txt").symlink_to(directory / "vision_head.onnx")
    assert files_on_disk(directory) == sorted([*FILES, "sub/deeper/z.bin", "a.txt"])
    assert MANIFEST not in files_on_disk(directory) and "sub" not in files_on_disk(directory)


@pytest.mark.parametrize("name", sorted(FILES))
def test_each_modified_file_is_refused(directory, name):
    (directory / name).write_bytes(FILES[name] + b"!")
    with pytest.raises(EngineDirError, match=rf"^{directory}/{name} does not match its SHA-256 in manifest.json \("):
        read_manifest(directory)


def test_missing_file_is_refused(directory):
    (directory / "decoder" / "config.json").unlink()
    (directory / "vision_tail.onnx").unlink()
    message = (
        rf"^{directory} is incomplete: decoder/config.json, vision_tail.onnx missing; rebuild it with build_engine$"
    )
    with pytest.raises(EngineDirError, match=message):
        read_manifest(directory)


def test_unlisted_file_is_refused(directory):
    (directory / "extra.bin").write_bytes(b"")
    (directory / "decoder" / "more.bin").write_bytes(b"")
    message = rf"^{directory} holds files its manifest does not list \(decoder/more.bin, extra.bin\); remove them"
    with pytest.raises(EngineDirError, match=message):
        read_manifest(directory)


def test_symlink_with_the_right_content_is_refused(directory, tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(FILES["vision_head.onnx"])  # same bytes, same hash: only the link itself is wrong
    (directory / "vision_head.onnx").unlink()
    (directory / "vision_head.onnx").symlink_to(outside)
    with pytest.raises(EngineDirError, match=rf"^{directory}/vision_head.onnx is a symbolic link; "):
        read_manifest(directory)


def test_graph_missing_from_the_artifacts_is_refused(directory):
    manifest = load_manifest(directory)
    renamed = replace(manifest.graphs[1], name="vision_other")
    with pytest.raises(EngineDirError, match=rf"^{directory}: graph vision_other.onnx is not among the artifacts"):
        verify_files(directory, replace(manifest, graphs=(manifest.graphs[0], renamed)))
    verify_files(directory, manifest)


def test_no_manifest_is_not_an_engine_directory(tmp_path):
    with pytest.raises(EngineDirError, match=rf"^{tmp_path} is not an engine directory \(no manifest.json\); build"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("content", [b'{"format": ', b"\xff\xfe not utf-8"])
def test_corrupt_manifest_is_refused(directory, content):
    (directory / MANIFEST).write_bytes(content)
    with pytest.raises(EngineDirError, match=rf"^{directory / MANIFEST} is corrupt \(.*\); rebuild the directory"):
        read_manifest(directory)


@pytest.mark.parametrize(
    ("data", "found"),
    [({"format": "earlytom-engine/1"}, "'earlytom-engine/1'"), ([1, 2], "None"), ({}, "None")],
)
def test_other_format_is_refused(directory, data, found):
    rewrite(directory, data)
    message = (
        rf"^{directory} has format {found}, this earlytom reads 'earlytom-engine/4'; rebuild it with build_engine$"
    )
    with pytest.raises(EngineDirError, match=message):
        read_manifest(directory)


def broken(directory, change) -> None:
    """`change` the manifest and digest it again: a self-consistent manifest whose fields are what is checked."""
    data = raw(directory)
    change(data)
    rewrite(directory, redigested(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.__setitem__("max_frames", "4"), r"manifest.json.max_frames must be int, not str \('4'\)"),
        (lambda d: d.__setitem__("max_frames", True), r"manifest.json.max_frames must be int, not bool \(True\)"),
        (lambda d: d.__setitem__("max_frames", 4.0), r"manifest.json.max_frames must be int, not float"),
        (lambda d: d["vision"].__setitem__("hidden", None), r"manifest.json.vision.hidden must be int, not NoneType"),
        (lambda d: d["model"].__setitem__("random_init", 1), r"manifest.json.model.random_init must be bool, not int"),
        (lambda d: d.__setitem__("model", ["tiny"]), r"manifest.json.model must be an object, not list"),
        (lambda d: d.__setitem__("notes", "a note"), r"manifest.json.notes must be a list, not str"),
        (lambda d: d.__setitem__("notes", [1]), r"manifest.json.notes\[0\] must be str, not int"),
        (lambda d: d["graphs"][1].__setitem__("start", "1"), r"manifest.json.graphs\[1\].start must be int, not str"),
        (lambda d: d.__setitem__("artifacts", []), r"manifest.json.artifacts must be an object, not list"),
        (lambda d: d["artifacts"].__setitem__("x", 5), r"manifest.json.artifacts.x must be str, not int"),
        (lambda d: d.__setitem__("earlytom", [1]), r"manifest.json.earlytom must be an object, not list"),
        (
            lambda d: d["verification_max_rel_error"].__setitem__("vision_head", {"hidden_0": "big"}),
            r"manifest.json.verification_max_rel_error.vision_head.hidden_0 must be float, not str",
        ),
        (
            lambda d: d["verification_max_rel_error"].__setitem__("vision_head", 1.0),
            r"manifest.json.verification_max_rel_error.vision_head must be an object, not float",
        ),
        (lambda d: d.__setitem__("tensorrt", "8.6"), r"manifest.json.tensorrt must be an object, not str"),
        (lambda d: d.__setitem__("extra", 1), r"manifest.json has unknown keys \['extra'\]"),
        (lambda d: d["vision"].pop("hidden"), r"manifest.json.vision lacks the key 'hidden'"),
        (lambda d: d.pop("created"), r"manifest.json lacks the key 'created'"),
    ],
)
def test_schema_violations_are_refused_by_name(directory, change, message):
    broken(directory, change)
    with pytest.raises(EngineDirError, match=rf"invalid manifest: {message}"):
        read_manifest(directory)


def test_optional_and_numeric_fields(directory):
    broken(directory, lambda d: d.pop("tensorrt"))  # optional: absent reads as None
    broken(directory, lambda d: d["verification_max_rel_error"]["vision_tail"].__setitem__("tokens", 3))
    manifest = read_manifest(directory)  # an int where a float is expected is a float
    assert manifest.tensorrt is None and manifest.verification_max_rel_error["vision_tail"] == {"tokens": 3}


def test_parse_reads_the_types_it_is_given():
    assert parse(dict, {"a": [1]}, "x") == {"a": [1]}
    assert parse(tuple[int, ...], [1, 2], "x") == (1, 2)
    assert parse(int | None, None, "x") is None and parse(int | None, 3, "x") == 3
    assert parse(bool, False, "x") is False and parse(float, 2, "x") == 2
    with pytest.raises(EngineDirError, match=r"^x must be an object, not int$"):
        parse(dict, 1, "x")
    with pytest.raises(EngineDirError, match=r"^x must be bool, not int \(0\)$"):
        parse(bool, 0, "x")


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.onnx", "a/../../x", "a\\b.onnx", ""])
def test_paths_outside_the_directory_are_refused(directory, path):
    with pytest.raises(
        EngineDirError, match=rf"^where names {path!r}, outside the engine directory$".replace("\\", "\\\\")
    ):
        check_relative(path, "where")
    broken(directory, lambda d: d["artifacts"].__setitem__(path, "0" * 64))
    with pytest.raises(
        EngineDirError, match=r"invalid manifest: manifest.json.artifacts names .*, outside the engine directory"
    ):
        read_manifest(directory)


def test_graph_file_outside_the_directory_is_refused(directory):
    broken(directory, lambda d: d["graphs"][0].__setitem__("name", "../head"))
    with pytest.raises(EngineDirError, match=r"invalid manifest: manifest.json.graphs names '../head.onnx', outside"):
        read_manifest(directory)
    check_relative("decoder/model.safetensors", "where")  # inside: accepted


def test_invalid_earlytom_section_is_refused(directory):
    broken(directory, lambda d: d["earlytom"].__setitem__("retain_ratio", 2.0))
    message = r"invalid manifest: manifest.json.earlytom is not a valid EarlyTom configuration: retain_ratio = 2.0 is"
    with pytest.raises(EngineDirError, match=message):
        read_manifest(directory)
    broken(directory, lambda d: d["earlytom"].__setitem__("colour", 1))
    with pytest.raises(
        EngineDirError, match=r"invalid manifest: manifest.json.earlytom is not a valid EarlyTom configuration: unknown"
    ):
        read_manifest(directory)


def test_other_model_is_refused(directory):
    assert read_manifest(directory, expect_model="tiny").model.name == "tiny"
    message = (
        rf"^{directory} was built for model 'tiny', not 'llava-ov-7b'; drop --model or build an engine "
        r"directory for 'llava-ov-7b'$"
    )
    with pytest.raises(EngineDirError, match=message):
        read_manifest(directory, expect_model="llava-ov-7b")


def test_onnxruntime_version_must_not_be_older_than_the_build(directory):
    installed = tool_versions()["onnxruntime"]
    broken(directory, lambda d: d["tools"].__setitem__("onnxruntime", "99.0"))
    message = (
        rf"^{directory} was verified with onnxruntime 99.0; this environment has {installed}. "
        r"Upgrade onnxruntime to >= 99.0 or rebuild the directory here$"
    )
    with pytest.raises(EngineDirError, match=message):
        read_manifest(directory)
    for same_or_older in (installed, "1.0"):
        broken(directory, lambda d, v=same_or_older: d["tools"].__setitem__("onnxruntime", v))
        read_manifest(directory)
    broken(directory, lambda d: d["tools"].pop("onnxruntime"))  # not recorded: nothing to compare
    read_manifest(directory)


def test_onnxruntime_version_compares_as_versions_not_strings(directory):
    installed = tool_versions()["onnxruntime"]
    major, minor = installed.split(".")[:2]
    newer = f"{major}.{int(minor) + 10}"  # "1.32" > "1.22" while "1.3" < "1.22" as strings would say otherwise
    broken(directory, lambda d: d["tools"].__setitem__("onnxruntime", newer))
    with pytest.raises(EngineDirError, match="was verified with onnxruntime"):
        read_manifest(directory)


def test_plans_for_another_tensorrt_or_gpu_are_refused():
    built = TensorRTInfo("11.1.0", "1.0", "sm_89")
    check_compatible(built, tensorrt_version="11.1.0", gpu_arch="sm_89")
    message = (
        r"^the engines were built with TensorRT 11.1.0, this machine has 11.2.0; rebuild them here with build_engine"
    )
    with pytest.raises(IncompatibleEngine, match=message):
        check_compatible(built, tensorrt_version="11.2.0", gpu_arch="sm_89")
    with pytest.raises(IncompatibleEngine, match=r"^the engines were built for sm_89, this GPU is sm_90; rebuild them"):
        check_compatible(built, tensorrt_version="11.1.0", gpu_arch="sm_90")
    assert issubclass(IncompatibleEngine, EngineDirError) and issubclass(EngineDirError, ValueError)

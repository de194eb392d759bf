"""`earlytom explain`: the trace's plans followed back to the original units (by hand), the report's counts against
`earlytom run --json` for the same options (the eager model, an onnxruntime engine directory), kept
tokens and sources against the pipeline's own Visual, and the drawing rendered: the PNG read back, the HTML in
headless Chromium (screenshot: not blank, every frame and score tile there)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from earlytom.cli import main
from earlytom.compress import CompressPlan, EarlyTomConfig, MergePlan
from earlytom.engine_builder.build import build
from earlytom.explain import (
    FRAME_TILE,
    SCORE_TILE,
    Recorder,
    compose,
    dropped_rows,
    explain_trace,
    explain_video,
    input_segments,
    layout,
    merge_step,
    row_labels,
    token_grid,
    write_report,
)
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames, write_clip

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rows_of(*units) -> list[dict[int, float]]:
    return [{u: 1.0} for u in units]


def test_compose_weights_follow_the_rows_back_to_the_units():
    rows = rows_of(0, 1, 2, 3, 4)
    first = compose(rows, [(0, 0, 1.0, 0.0), (1, 2, 0.6, 0.4), (3, 3, 1.0, 0.0), (4, 4, 1.0, 0.0)])
    assert first == [{0: 1.0}, {1: 0.6, 2: 0.4}, {3: 1.0}, {4: 1.0}]
    second = compose(first, [(0, 1, 0.5, 0.5), (2, 3, 1.0, 0.0)])
    assert second == [{0: 0.5, 1: 0.3, 2: 0.2}, {3: 1.0}]  # unit 4 entered with weight 0: gone


def test_dropped_rows_are_the_unemitted_and_the_weight_0_partners():
    # rows 0..5: 1+2 merged with weight 1 / 0 (2 enters with nothing), 3 never emitted (the released quirk)
    merged = [(0, 0, 1.0, 0.0), (1, 2, 1.0, 0.0), (4, 4, 1.0, 0.0), (5, 5, 1.0, 0.0)]
    assert dropped_rows(6, merged) == [2, 3]
    assert dropped_rows(3, [(0, 0, 1.0, 0.0), (1, 2, 0.7, 0.3)]) == []


def official_plan(rows, segments) -> CompressPlan:
    return CompressPlan(
        source=torch.tensor([[a, b] for a, b, _, _ in rows]),
        weight=torch.tensor([[w, v] for _, _, w, v in rows], dtype=torch.float32),
        segments=torch.tensor(segments),
    )


def test_a_merge_step_in_original_units():
    # the input rows already hold units (0), (1, 2), (3), (4), (5), (6), (7); segments [0, 5] and [6, 6] of rows:
    # head 0, middles 1..4 scanned (1 + 2 merged at 0.75 / 0.25, 3 kept, 4 dropped), tail 5; row 6 alone
    before = [{0: 1.0}, {1: 0.5, 2: 0.5}, {3: 1.0}, {4: 1.0}, {5: 1.0}, {6: 1.0}, {7: 1.0}]
    rows = [(0, 0, 1.0, 0.0), (1, 2, 0.75, 0.25), (3, 3, 1.0, 0.0), (5, 5, 1.0, 0.0), (6, 6, 1.0, 0.0)]
    plan = official_plan(rows, [[0, 5], [6, 6]])
    step = merge_step(before, {"layer": 8, "frames": 7, "plan": plan})
    assert step.layer == 8 and step.frames_in == 7
    assert step.rows == ({0: 1.0}, {1: 0.375, 2: 0.375, 3: 0.25}, {4: 1.0}, {6: 1.0}, {7: 1.0})
    assert step.pairs == (((1, 2), (3,), 0.75, 0.25),)
    assert step.segments == ((0, 6), (7, 7))  # rows 0..5 hold units 0..6
    assert step.dropped == (5,)


def test_a_merge_step_refuses_a_trace_of_another_length():
    plan = official_plan([(0, 0, 1.0, 0.0)], [[0, 0]])
    with pytest.raises(ValueError, match="merges 1 rows at layer 3, 2 were traced"):
        merge_step(rows_of(0, 1), {"layer": 3, "frames": 1, "plan": plan})


def test_paper_segments_come_from_the_segment_ids():
    plan = MergePlan(
        source=torch.tensor([[0, 0], [1, 2], [3, 3], [4, 4], [5, 5]]),
        weight=torch.tensor([[1, 0], [0.5, 0.5], [1, 0], [1, 0], [1, 0]], dtype=torch.float32),
        segment=torch.tensor([0, 0, 0, 1, 1]),
        is_static=torch.tensor([False, True, False, False, False]),
    )
    assert input_segments(plan) == [(0, 3), (4, 5)]
    assert input_segments(official_plan([(0, 0, 1.0, 0.0)], [[0, 2], [3, 3]])) == [(0, 2), (3, 3)]


def test_row_labels():
    segments = torch.tensor([[0, 0], [1, 4], [5, 6]])  # 1 frame; 4 frames: head, 2 middles, tail; 2 frames
    assert row_labels(segments, 7) == ["dynamic", "dynamic", "static", "static", "dynamic", "dynamic", "dynamic"]
    assert row_labels(torch.tensor([True, False]), 2) == ["static", "dynamic"]
    assert row_labels(None, 3) == ["", "", ""]


@pytest.mark.parametrize(
    ("tokens", "frame", "grid"),
    [(196, (384, 384), (14, 14)), (25, (72, 72), (5, 5)), (384, (448, 672), (16, 24)), (7, (10, 10), (1, 7))],
)
def test_token_grid(tokens, frame, grid):
    assert token_grid(tokens, frame) == grid


def test_the_recorder_refuses_an_unknown_event():
    with pytest.raises(ValueError, match="trace event 'stretch'"):
        Recorder()("stretch", layer=1)
    with pytest.raises(ValueError, match="the trace has no selection"):
        explain_trace(Recorder(), ratio=0.1, frames_in=4)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "demo.mp4", moving_square_frames(48, cut_at=24))


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_kept_tokens_and_sources_are_the_pipelines(clip, variant):
    pipe = Pipeline.from_pretrained("tiny", num_frames=16, config=EarlyTomConfig(variant=variant))
    (video_frames, (explanation,)) = explain_video([pipe], clip)
    visual = pipe.generate(clip, "hi", 1).visual
    assert len(video_frames.frames) == 16 and explanation.units == visual.units == 16
    assert len(explanation.rows) == visual.source.shape[0]
    for n, units in enumerate(explanation.rows):
        assert min(units) == visual.source[n, 0] and max(units) <= visual.source[n, 1]
        assert list(explanation.kept[n]) == sorted(visual.index[visual.frame == n].tolist())
        assert sum(units.values()) == pytest.approx(1.0, abs=1e-5)  # every row is a weighted mean of its units
    assert explanation.counts["frames_after_merge"] == visual.source.shape[0]
    assert {f"frames_after_layer_{k}": v for k, v in visual.frames_after.items()} == {
        k: v for k, v in explanation.counts.items() if k.startswith("frames_after_layer_")
    }


def cli_json(capsys, *args) -> dict:
    assert main(["run", *args, "--prompt", "hi", "--max-new-tokens", "1", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["counts"]


def report_counts(path: Path) -> dict:
    found = re.search(r'<script type="application/json" id="counts">(.*?)</script>', path.read_text())
    return json.loads(found[1])


VISION = ("frames_in", "frames_after_merge", "visual_tokens")


def vision_counts(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if k in VISION or k.startswith("frames_after_layer_")}


def test_the_report_counts_are_run_jsons(clip, tmp_path, capsys):
    out = tmp_path / "report.html"
    options = ["--video", str(clip), "--frames", "16"]
    assert main(["explain", *options, "--retain-ratio", "0.1,0.3", "--out", str(out)]) == 0
    capsys.readouterr()
    reported = report_counts(out)
    assert list(reported) == ["0.1", "0.3"]
    for ratio in ("0.1", "0.3"):
        assert reported[ratio] == vision_counts(cli_json(capsys, *options, "--retain-ratio", ratio))
    table = re.search(r"<tr><th>visual_tokens</th><td>(\d+)</td><td>(\d+)</td></tr>", out.read_text())
    assert [int(table[1]), int(table[2])] == [reported["0.1"]["visual_tokens"], reported["0.3"]["visual_tokens"]]


def test_an_engine_directory_reports_run_jsons_counts(clip, tmp_path, capsys):
    engine = tmp_path / "engine"
    build("tiny", engine, backend="onnxruntime", frames=8, config=None, progress=False)
    out = tmp_path / "report.png"
    options = ["--engine", str(engine), "--video", str(clip), "--tau-seg", "0.9"]
    assert main(["explain", *options, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    counts = vision_counts(cli_json(capsys, *options))
    assert str(counts) in printed  # explain prints the counts it drew
    layers = sum(k.startswith("frames_after_layer_") for k in counts)
    # 8 tiles of 0.9 in + 1 in of margins; 1.4 in of counts, a 0.9 in strip, 0.8 in per layer, 1.3 in of heatmaps
    assert Image.open(out).size == (820, round((1.4 + 0.9 + 0.8 * layers + 1.3) * 100))


def rings(image: np.ndarray, color: str) -> int:
    """Connected areas of exactly `color` (tile borders) larger than a few pixels."""
    rgb = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
    mask = (image[..., :3] == rgb).all(-1)
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return int((np.asarray(sizes) > 100).sum())


def check_drawing(image: np.ndarray, frame_tiles: int, score_tiles: int) -> None:
    assert image[..., :3].std() > 20  # not blank
    assert rings(image, FRAME_TILE) == frame_tiles
    assert rings(image, SCORE_TILE) == score_tiles


@pytest.fixture(scope="module")
def explained(clip):
    pipe = Pipeline.from_pretrained("tiny", num_frames=12)
    pipes = [pipe.with_options(retain_ratio=r) for r in (0.1, 0.25)]
    return explain_video(pipes, clip)


def test_the_png_holds_every_tile(explained, tmp_path):
    video, explanations = explained
    write_report(tmp_path / "r.png", video, explanations, "tiny")
    image = np.asarray(Image.open(tmp_path / "r.png").convert("RGB"))
    size = layout(explanations)
    assert (image.shape[1], image.shape[0]) == (size.width, size.height)
    assert size.frame_tiles == 2 * 12
    check_drawing(image, size.frame_tiles, size.score_tiles)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium) to render the HTML")
def test_the_html_renders_in_headless_chromium(explained, tmp_path):
    video, explanations = explained
    report = tmp_path / "report.html"
    write_report(report, video, explanations, "tiny")
    size = layout(explanations)
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    flags += ["--hide-scrollbars", f"--window-size={size.width + 200},{size.height + 600}", f"--screenshot={shot}"]
    subprocess.run([CHROMIUM, *flags, report.as_uri()], capture_output=True, timeout=120, check=True)
    image = np.asarray(Image.open(shot).convert("RGB"))
    check_drawing(image, size.frame_tiles, size.score_tiles)

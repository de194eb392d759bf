"""`earlytom explain`: what EarlyTom kept of one video and what it threw away, drawn with matplotlib.

    earlytom explain --video clip.mp4 --model llava-ov-7b --retain-ratio 0.1,0.2 --out report.html   (or .png)

For each retain ratio, side by side: the frame strip (one tile per encoder unit); under it, a track per merge layer
with the segment boundaries, the merged pairs and their weights, and the frames dropped there (the official
variant's released-code quirk drops the last middle frame of a segment, or merges it with weight 0: DESIGN.md 4b);
then one score heatmap per frame left after the last merge, its kept tokens outlined, labelled dynamic or static;
and the counts, which are `earlytom run --json`'s vision counts for the same options. The HTML file is
self-contained (the drawing inlined as a base64 PNG, the counts as a table and as JSON); the PNG is the drawing.

Everything shown comes from encode_chain's `trace` (earlytom.runtime.chain): the merge plans (input rows, weights,
segments) and the selection with its scores. Rows are followed back to the B original units by composing the plans.
"""

import base64
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Arc, Rectangle

from earlytom.compress import MergePlan, segment_labels
from earlytom.runtime.pipeline import Pipeline, pixel_chunks
from earlytom.runtime.timing import StageTimer
from earlytom.video import stream_video

FORMATS = (".html", ".png")
FRAME_TILE = "#ff00fe"  # border of a frame tile (exact colour: the tests count the tiles by it)
SCORE_TILE = "#00fe00"  # border of a score heatmap
KEPT = "#ff3030"  # outline of a kept token
DROPPED = "#d62728"
TILE_INCHES = 0.9
TRACK_INCHES = 0.8
DPI = 100


@dataclass(frozen=True)
class Step:
    """One merge layer, in the B original units. `rows`: each output row's units and weights (composed over the
    earlier merges; units merged in with weight 0 are left out); `pairs`: the rows merged here, as the units of the
    two input rows and their weights; `segments`: the segmentation of the input, (first, last) unit; `dropped`: the
    units this merge drops (an input row no output row takes with a weight above 0)."""

    layer: int
    frames_in: int
    rows: tuple[dict[int, float], ...]
    pairs: tuple[tuple[tuple[int, ...], tuple[int, ...], float, float], ...]
    segments: tuple[tuple[int, int], ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class Explanation:
    """One encoded video: the merge steps, the rows left (their units), each row's label ("dynamic", "static", or ""
    without compression), scores [N, T], the kept token indices per row, and the counts of `earlytom run --json`."""

    ratio: float
    units: int
    steps: tuple[Step, ...]
    rows: tuple[dict[int, float], ...]
    labels: tuple[str, ...]
    scores: np.ndarray
    kept: tuple[tuple[int, ...], ...]
    counts: dict[str, int]
    extra: dict[str, int] = field(default_factory=dict)


class Recorder:
    """encode_chain's trace: keeps the merge steps and the selection it is given."""

    def __init__(self) -> None:
        self.merges: list[dict] = []
        self.selection: dict | None = None

    def __call__(self, event: str, **data) -> None:
        if event == "merge":
            self.merges.append(data)
        elif event == "select":
            self.selection = data
        else:
            raise ValueError(f"trace event {event!r} is neither 'merge' nor 'select'")


def plan_rows(plan) -> list[tuple[int, int, float, float]]:
    """A merge plan's output rows: (input row, input row, weight, weight); a row kept as is names its row twice."""
    return [(a, b, w, v) for (a, b), (w, v) in zip(plan.source.tolist(), plan.weight.tolist(), strict=True)]


def input_segments(plan) -> list[tuple[int, int]]:
    """The segmentation of a plan's input rows, (first, last) each: official plans carry it, a paper plan gives a
    segment id per output row (whose rows span first .. last input row)."""
    if not isinstance(plan, MergePlan):
        return [tuple(s) for s in plan.segments.tolist()]
    spans: dict[int, tuple[int, int]] = {}
    for segment, (first, last) in zip(plan.segment.tolist(), plan.source.tolist(), strict=True):
        low, high = spans.get(segment, (first, last))
        spans[segment] = (min(low, first), max(high, last))
    return [spans[s] for s in sorted(spans)]


def compose(rows: list[dict[int, float]], merged: list[tuple[int, int, float, float]]) -> list[dict[int, float]]:
    """Units and weights of the output rows: row (a, b, w, v) holds w * rows[a] + v * rows[b] (a == b: rows[a])."""
    out = []
    for a, b, w, v in merged:
        units: dict[int, float] = {}
        for row, weight in ((a, w), (b, v)) if a != b else ((a, 1.0),):
            for unit, share in rows[row].items():
                if weight * share > 0:
                    units[unit] = units.get(unit, 0.0) + weight * share
        out.append(units)
    return out


def dropped_rows(num_rows: int, merged: list[tuple[int, int, float, float]]) -> list[int]:
    """Input rows no output row takes with a weight above 0."""
    taken = {a for a, _, w, _ in merged if w > 0} | {b for _, b, _, v in merged if v > 0}
    return [row for row in range(num_rows) if row not in taken]


def span(units: dict[int, float] | tuple[int, ...]) -> tuple[int, int]:
    return min(units), max(units)


def merge_step(rows: list[dict[int, float]], data: dict) -> Step:
    """The trace of one merge ("layer", "frames", "plan") on `rows` (the input rows' units) -> Step."""
    merged = plan_rows(data["plan"])
    if data["frames"] != len(rows):
        raise ValueError(f"the trace merges {data['frames']} rows at layer {data['layer']}, {len(rows)} were traced")
    pairs = tuple((tuple(sorted(rows[a])), tuple(sorted(rows[b])), w, v) for a, b, w, v in merged if a != b)
    segments = tuple((span(rows[first])[0], span(rows[last])[1]) for first, last in input_segments(data["plan"]))
    dropped = tuple(unit for row in dropped_rows(len(rows), merged) for unit in sorted(rows[row]))
    return Step(data["layer"], data["frames"], tuple(compose(rows, merged)), pairs, segments, dropped)


def row_labels(labels, num_rows: int) -> list[str]:
    """The selection's labels per row: paper is_static [N] (bool), official segments [S, 2]; None: no labels."""
    if labels is None:
        return [""] * num_rows
    static = labels.tolist() if labels.dtype == torch.bool else segment_labels(labels.tolist())
    return ["static" if s else "dynamic" for s in static]


def explain_trace(recorder: Recorder, *, ratio: float, frames_in: int) -> Explanation:
    """The Explanation of one traced encode_chain run of `frames_in` decoded frames."""
    if recorder.selection is None:
        raise ValueError("the trace has no selection: the vision chain did not finish")
    scores = recorder.selection["scores"].float().cpu()
    selection = recorder.selection["selection"]
    units = recorder.merges[0]["frames"] if recorder.merges else scores.shape[0]
    rows: list[dict[int, float]] = [{u: 1.0} for u in range(units)]
    steps = []
    for data in recorder.merges:
        steps.append(merge_step(rows, data))
        rows = list(steps[-1].rows)
    kept: list[list[int]] = [[] for _ in rows]
    for frame, index in zip(selection.frame.tolist(), selection.index.tolist(), strict=True):
        kept[frame].append(index)
    labels = row_labels(recorder.selection["labels"], len(rows))
    counts = {
        "frames_in": frames_in,
        **{f"frames_after_layer_{step.layer}": len(step.rows) for step in steps},
        "frames_after_merge": len(rows),
        "visual_tokens": len(selection.frame),
    }
    extra = {
        "merged_pairs": sum(len(step.pairs) for step in steps),
        "dropped_frames": sum(len(step.dropped) for step in steps),
        "dynamic_frames": labels.count("dynamic"),
        "static_frames": labels.count("static"),
    }
    return Explanation(
        ratio=ratio,
        units=units,
        steps=tuple(steps),
        rows=tuple(rows),
        labels=tuple(labels),
        scores=scores.numpy(),
        kept=tuple(tuple(sorted(k)) for k in kept),
        counts=counts,
        extra=extra,
    )


@dataclass(frozen=True)
class Video:
    """The decoded frames of the report: uint8 [H, W, 3] each, `per_unit` frames to an encoder unit."""

    frames: list[np.ndarray]
    per_unit: int
    name: str

    def unit(self, u: int) -> np.ndarray:
        return self.frames[u * self.per_unit]


def explain_video(pipes: list[Pipeline], video) -> tuple[Video, list[Explanation]]:
    """Decode `video` once with the first pipeline's sampling, then trace each pipeline's vision chain on it."""
    first = pipes[0]
    processor = first.backend.text.processor
    options = first.options
    stream = stream_video(video, options.num_frames, size=processor.frame_size, sampling=options.sampling)
    frames = [torch.as_tensor(f).cpu() for f in stream]
    name = Path(video).name if isinstance(video, str | os.PathLike) else "frames"
    decoded = Video([f.numpy() for f in frames], processor.frames_per_unit, name)
    explanations = []
    with torch.inference_mode():
        for pipe in pipes:
            recorder = Recorder()
            pipe.backend.encode(pixel_chunks(frames, processor, StageTimer()), pipe.options, StageTimer(), recorder)
            ratio = pipe.options.config.retain_ratio
            explanations.append(explain_trace(recorder, ratio=ratio, frames_in=len(frames)))
    return decoded, explanations


def token_grid(tokens: int, frame_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) of a frame's T tokens in raster order, the frame's aspect (1 x T when none fits)."""
    height, width = frame_size
    rows = max(1, round(math.sqrt(tokens * height / width)))
    return (rows, tokens // rows) if tokens % rows == 0 else (1, tokens)


@dataclass(frozen=True)
class Layout:
    """The drawing's size in pixels and tiles: one column of `units` tiles per explanation."""

    width: int
    height: int
    frame_tiles: int
    score_tiles: int


def layout(explanations: list[Explanation]) -> Layout:
    tracks = max(len(e.steps) for e in explanations)
    width_in = sum(e.units * TILE_INCHES + 1.0 for e in explanations)
    height_in = 1.4 + TILE_INCHES + tracks * TRACK_INCHES + TILE_INCHES + 0.4
    return Layout(
        width=round(width_in * DPI),
        height=round(height_in * DPI),
        frame_tiles=sum(e.units for e in explanations),
        score_tiles=sum(len(e.rows) for e in explanations),
    )


def outline(ax, color: str, width: float = 3.0) -> None:
    """A tile's border in exactly `color` (no antialiasing), drawn just inside the axes."""
    ax.add_patch(
        Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=color, linewidth=width, antialiased=False)
    )


def units_text(units) -> str:
    first, last = span(units)
    return f"{first}" if first == last else f"{first}-{last}"


def draw_track(ax, step: Step, units: int) -> None:
    """One merge layer over the units: segments shaded and separated, merged pairs as arcs with their weights, the
    units dropped here crossed out."""
    ax.set_xlim(-0.5, units - 0.5)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    for i, (first, last) in enumerate(step.segments):
        ax.axvspan(first - 0.5, last + 0.5, color="#e8eef7" if i % 2 else "#f7f1e3", zorder=0)
        if i:
            ax.axvline(first - 0.5, color="black", linewidth=1.5)
    for row in step.rows:
        if len(row) == 1:
            ax.plot([next(iter(row))], [0.25], "o", color="#555555", markersize=3)
    for a, b, w, v in step.pairs:
        x0, x1 = np.mean(a), np.mean(b)
        ax.add_patch(Arc(((x0 + x1) / 2, 0.25), x1 - x0, 0.6, theta1=0, theta2=180, color="#1f77b4", linewidth=1.5))
        ax.text((x0 + x1) / 2, 0.62, f"{w:.2f}/{v:.2f}", ha="center", fontsize=6, color="#1f77b4")
    for unit in step.dropped:
        ax.plot([unit], [0.25], "x", color=DROPPED, markersize=8, markeredgewidth=2)
    ax.text(
        -0.5,
        0.98,
        f"after layer {step.layer}: {step.frames_in} -> {len(step.rows)} frames, "
        f"{len(step.pairs)} merged, {len(step.dropped)} dropped",
        fontsize=7,
        va="top",
    )


def draw_scores(ax, explanation: Explanation, n: int, grid: tuple[int, int]) -> None:
    ax.imshow(explanation.scores[n].reshape(grid), cmap="viridis", interpolation="nearest")
    for index in explanation.kept[n]:
        r, c = divmod(index, grid[1])
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor=KEPT, linewidth=1, antialiased=False))
    ax.set_xticks([])
    ax.set_yticks([])
    label = {"dynamic": "dyn", "static": "stat"}.get(explanation.labels[n], "")
    ax.set_title(f"{units_text(explanation.rows[n])} {label} {len(explanation.kept[n])}", fontsize=6, pad=2)
    outline(ax, SCORE_TILE)


def counts_text(explanation: Explanation) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in explanation.counts.items())
    extra = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in explanation.extra.items())
    return f"retain ratio {explanation.ratio:g}\n{counts}\n{extra}"


def draw_explanation(subfigure, explanation: Explanation, video: Video, tracks: int) -> None:
    """One explanation's column: counts, the frame strip, a track per merge layer, the score heatmaps (each under
    the first unit of its row)."""
    B = explanation.units
    heights = [1.4, TILE_INCHES, *[TRACK_INCHES] * tracks, TILE_INCHES + 0.4]
    grid = subfigure.add_gridspec(len(heights), B, height_ratios=heights, left=0.3 / (B + 1), right=1 - 0.3 / (B + 1))
    header = subfigure.add_subplot(grid[0, :])
    header.set_axis_off()
    header.text(0, 0.9, counts_text(explanation), fontsize=8, va="top", family="monospace")
    for u in range(B):
        ax = subfigure.add_subplot(grid[1, u])
        ax.imshow(video.unit(u))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(u), fontsize=6, pad=2)
        outline(ax, FRAME_TILE)
    for i, step in enumerate(explanation.steps):
        draw_track(subfigure.add_subplot(grid[2 + i, :]), step, B)
    tokens = explanation.scores.shape[1]
    shape = token_grid(tokens, video.frames[0].shape[:2])
    for n, row in enumerate(explanation.rows):
        draw_scores(subfigure.add_subplot(grid[-1, span(row)[0]]), explanation, n, shape)


def draw(video: Video, explanations: list[Explanation]) -> bytes:
    """The drawing of `explanations` side by side as PNG bytes (its size: `layout`)."""
    size = layout(explanations)
    figure = Figure(figsize=(size.width / DPI, size.height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    widths = [e.units * TILE_INCHES + 1.0 for e in explanations]
    subfigures = figure.subfigures(1, len(explanations), width_ratios=widths, squeeze=False)[0]
    tracks = max(len(e.steps) for e in explanations)
    for subfigure, explanation in zip(subfigures, explanations, strict=True):
        draw_explanation(subfigure, explanation, video, tracks)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def step_items(step: Step) -> str:
    segments = " ".join(f"[{a}-{b}]" if a != b else f"[{a}]" for a, b in step.segments)
    pairs = ", ".join(f"{units_text(a)} + {units_text(b)} ({w:.3f} / {v:.3f})" for a, b, w, v in step.pairs) or "none"
    dropped = ", ".join(map(str, step.dropped)) or "none"
    return (
        f"<li>after layer {step.layer}: {step.frames_in} &rarr; {len(step.rows)} frames<br>segments {segments}<br>"
        f"merged pairs (unit weights): {pairs}<br>dropped units: {dropped}</li>"
    )


def labelled(explanation: Explanation, label: str) -> str:
    """The rows with `label`, by their units."""
    rows = zip(explanation.rows, explanation.labels, strict=True)
    return ", ".join(units_text(row) for row, mine in rows if mine == label) or "none"


def html_report(video: Video, explanations: list[Explanation], png: bytes, title: str) -> str:
    """The self-contained report: counts (table and JSON), the drawing inlined, the merges as text."""
    ratios = [f"{e.ratio:g}" for e in explanations]
    names = list(dict.fromkeys(k for e in explanations for k in (*e.counts, *e.extra)))
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f"<td>{e.counts.get(name, e.extra.get(name, ''))}</td>" for e in explanations)
        + "</tr>"
        for name in names
    )
    details = "".join(
        f"<h3>retain ratio {r}</h3><ul>{''.join(step_items(s) for s in e.steps) or '<li>no merge</li>'}</ul>"
        f"<p>dynamic: {labelled(e, 'dynamic')}<br>static: {labelled(e, 'static')}</p>"
        for r, e in zip(ratios, explanations, strict=True)
    )
    counts = json.dumps({r: e.counts for r, e in zip(ratios, explanations, strict=True)})
    image = base64.b64encode(png).decode("ascii")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EarlyTom explain: {html.escape(video.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; }} table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #bbb; padding: 2px 8px; text-align: right; }} th {{ text-align: left; }}
img.drawing {{ display: block; margin: 12px 0; }}
</style></head><body>
<h1>EarlyTom: what {html.escape(title)} kept of {html.escape(video.name)}</h1>
<table><tr><th>retain ratio</th>{"".join(f"<td>{r}</td>" for r in ratios)}</tr>{rows}</table>
<script type="application/json" id="counts">{counts}</script>
<img class="drawing" alt="frame strip, merges per layer, score heatmaps" src="data:image/png;base64,{image}">
<p>Frame tiles (magenta border): the sampled units. Each track: one merge layer; shaded spans are its segments, black
lines their boundaries, arcs the merged pairs with their weights, red crosses the units dropped there (official
variant: the released code never emits a segment's last middle frame on its own, DESIGN.md 4b). Heatmaps (green
border): the scores of each frame left, under its first unit, kept tokens outlined in red; its title gives its
units, dynamic or static, and the tokens kept.</p>
{details}
</body></html>
"""


def write_report(path: Path, video: Video, explanations: list[Explanation], title: str) -> None:
    """`path` ending in .html (the report) or .png (the drawing)."""
    png = draw(video, explanations)
    if path.suffix.lower() == ".png":
        path.write_bytes(png)
    else:
        path.write_text(html_report(video, explanations, png, title))


def check_output(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"--out {path}: write a report.html (self-contained) or a report.png")
    if not path.parent.is_dir():
        raise ValueError(f"--out {path}: the directory {path.parent} does not exist")

"""`earlytom compare`: on a user's own videos and questions, run full tokens and each compressed setting on the
same backend and report, per setting, answer agreement with full tokens (and accuracy when answers are given),
mean visual tokens, TTFT median / p90 and the speedup over full tokens."""

import json
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from earlytom.eval.answers import answer_key, expected_key, multiple_choice_prompt
from earlytom.eval.backend import open_pipeline
from earlytom.eval.questions import Question
from earlytom.runtime.pipeline import Pipeline
from earlytom.video import VideoFile


@dataclass(frozen=True)
class Setting:
    """One way to run the pipeline: `method` with `retain_ratio` (None: the backend's) and `variant` (None: the
    default)."""

    method: str
    retain_ratio: float | None = None
    variant: str | None = None

    @property
    def label(self) -> str:
        parts = [self.method]
        if self.retain_ratio is not None:
            parts.append(f"r={self.retain_ratio:g}")
        if self.variant is not None:
            parts.append(self.variant)
        return " ".join(parts)


FULL = Setting("full")


@dataclass
class Answer:
    """One setting's reply to one question: its key (first line, or chosen letter), the visual tokens sent,
    the frames left after merging and the TTFT."""

    key: str
    visual_tokens: int
    frames_after_merge: int
    ttft_ms: float
    notes: list[str] = field(default_factory=list)


@dataclass
class Summary:
    setting: str
    agreement: float  # fraction of questions answered as with full tokens
    accuracy: float | None  # fraction right among the questions with an answer (None: no answers given)
    visual_tokens: float  # mean
    frames_after_merge: float  # mean
    ttft_ms_median: float
    ttft_ms_p90: float
    speedup: float  # full tokens' median TTFT / this setting's


def settings_grid(methods: list[str], ratios: list[float] | None, variants: list[str] | None) -> list[Setting]:
    """Full tokens first, then every compressed method at every ratio (EarlyTom also at every variant)."""
    if "full" in methods:
        raise ValueError("--method full: full tokens always run, as the reference; list compressed methods only")
    grid = [FULL]
    for method in methods:
        for ratio in ratios or [None]:
            for variant in (variants or [None]) if method == "earlytom" else [None]:
                grid.append(Setting(method, ratio, variant))
    return grid


def open_pipelines(variants: list[str] | None, **backend) -> dict[str | None, Pipeline]:
    """One pipeline per variant (the eager model is loaded once per variant; an engine directory admits its own
    variant only), keyed by variant; None (the default variant) when no variant is listed."""
    return {variant: open_pipeline(variant=variant, **backend) for variant in variants or [None]}


def pipeline_for(setting: Setting, pipelines: dict[str | None, Pipeline]) -> Pipeline:
    """The setting's pipeline: its variant's loaded weights with its method and ratio (nothing reloaded)."""
    base = pipelines[setting.variant] if setting.variant is not None else next(iter(pipelines.values()))
    return base.with_options(method=setting.method, retain_ratio=setting.retain_ratio)


def prompt_for(question: Question) -> str:
    if question.options is None:
        return question.question
    return multiple_choice_prompt(question.question, question.options)


def ask(pipeline: Pipeline, question: Question, max_new_tokens: int, stream: int | None = None) -> Answer:
    """`stream`: each video file's stream at that index (None: its video stream with the most frames)."""
    video = question.video if stream is None else VideoFile(question.video, stream)
    try:
        result = pipeline.generate(video, prompt_for(question), max_new_tokens)
    except ValueError as error:
        raise ValueError(f"line {question.line} ({question.video}): {error}") from error
    return Answer(
        key=answer_key(result.text, question.options),
        visual_tokens=result.counts["visual_tokens"],
        frames_after_merge=result.counts["frames_after_merge"],
        ttft_ms=result.timings_ms["ttft"],
        notes=result.notes,
    )


def run(
    questions: list[Question],
    pipelines: dict[Setting, Pipeline],
    *,
    max_new_tokens: int,
    progress: bool = True,
    stream: int | None = None,
) -> dict[Setting, list[Answer]]:
    """Every setting on every question (`stream`: see ask), after one untimed request (the last, most compressed
    setting on the first question) that keeps the process's one-time start-up costs out of the TTFT."""
    ask(list(pipelines.values())[-1], questions[0], max_new_tokens, stream)
    answers = {setting: [] for setting in pipelines}
    for question in tqdm(questions, desc="videos", unit="video", disable=not progress):
        for setting, pipeline in pipelines.items():
            answers[setting].append(ask(pipeline, question, max_new_tokens, stream))
    return answers


def fraction(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def summarize(questions: list[Question], answers: dict[Setting, list[Answer]]) -> list[Summary]:
    """Per setting: agreement with full tokens, accuracy, mean visual tokens and frames, TTFT median / p90, speedup."""
    reference = answers[FULL]
    full_median = float(np.median([a.ttft_ms for a in reference]))
    rows = []
    for setting, replies in answers.items():
        ttft = [a.ttft_ms for a in replies]
        graded = [
            a.key == expected_key(q.answer, q.options) for q, a in zip(questions, replies, strict=True) if q.answer
        ]
        rows.append(
            Summary(
                setting=setting.label,
                agreement=fraction([a.key == f.key for a, f in zip(replies, reference, strict=True)]),
                accuracy=fraction(graded),
                visual_tokens=float(np.mean([a.visual_tokens for a in replies])),
                frames_after_merge=float(np.mean([a.frames_after_merge for a in replies])),
                ttft_ms_median=float(np.median(ttft)),
                ttft_ms_p90=float(np.percentile(ttft, 90)),
                speedup=full_median / float(np.median(ttft)),
            )
        )
    return rows


def table(rows: list[Summary]) -> str:
    """The summaries as an aligned text table."""
    header = ["setting", "agreement", "accuracy", "visual tokens", "frames", "TTFT median ms", "TTFT p90 ms", "speedup"]
    cells = [
        [
            r.setting,
            f"{r.agreement:.3f}",
            "-" if r.accuracy is None else f"{r.accuracy:.3f}",
            f"{r.visual_tokens:.1f}",
            f"{r.frames_after_merge:.1f}",
            f"{r.ttft_ms_median:.1f}",
            f"{r.ttft_ms_p90:.1f}",
            f"{r.speedup:.2f}x",
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *cells]
    return "\n".join(aligned(line, widths) for line in lines)


def aligned(cells: list[str], widths: list[int]) -> str:
    """One table line: the first cell left-aligned, the numbers right-aligned."""
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def plot(rows: list[Summary], path) -> None:
    """Agreement with full tokens against median TTFT, one labelled point per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r.ttft_ms_median, r.agreement)
        ax.annotate(r.setting, (r.ttft_ms_median, r.agreement), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("TTFT median (ms)")
    ax.set_ylabel("answer agreement with full tokens")
    ax.set_ylim(-0.05, 1.1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def notes_of(answers: dict[Setting, list[Answer]]) -> list[str]:
    """Every distinct note the runs gave (random weights, fewer frames than asked, ...), in order."""
    return list(dict.fromkeys(note for replies in answers.values() for a in replies for note in a.notes))


def report(rows: list[Summary], *, skipped: list[str], notes: list[str], as_json: bool) -> None:
    for message in [*notes, *skipped]:
        print(f"note: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"settings": [asdict(r) for r in rows], "skipped": skipped, "notes": notes}))
    else:
        print(table(rows))

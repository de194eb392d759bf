"""Questions about videos, one JSON object a line: {"video": PATH, "question": TEXT} with optional
"options": [TEXT, ...] (multiple choice) and "answer" (an option's letter, an option's text, or free text).
A relative video path is relative to the JSONL file."""

import json
from dataclasses import dataclass
from pathlib import Path

from earlytom.eval.answers import expected_key

FIELDS = {"video", "question", "options", "answer"}


@dataclass(frozen=True)
class Question:
    line: int  # 1-based line number in the JSONL file
    video: Path
    question: str
    options: tuple[str, ...] | None = None
    answer: str | None = None


def parse_line(text: str, line: int, root: Path) -> Question:
    """One JSONL line -> a Question (ValueError naming the line and what is wrong)."""
    try:
        item = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"line {line}: not JSON ({error.msg})") from error
    if not isinstance(item, dict):
        raise ValueError(f"line {line}: expected a JSON object, got {type(item).__name__}")
    unknown = set(item) - FIELDS
    if unknown:
        raise ValueError(f"line {line}: unknown field(s) {', '.join(sorted(unknown))}; use {', '.join(sorted(FIELDS))}")
    for key in ("video", "question"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise ValueError(f"line {line}: {key!r} must be a non-empty string")
    options = item.get("options")
    if options is not None and (
        not isinstance(options, list) or not 2 <= len(options) <= 26 or not all(isinstance(o, str) for o in options)
    ):
        raise ValueError(f"line {line}: 'options' must be a list of 2 to 26 strings")
    answer = item.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise ValueError(f"line {line}: 'answer' must be a string (a letter, an option or free text)")
    if answer is not None:
        try:
            expected_key(answer, options)
        except ValueError as error:
            raise ValueError(f"line {line}: {error}") from error
    video = root / item["video"]
    if not video.exists():
        raise ValueError(f"line {line}: video {video} does not exist")
    return Question(line, video, item["question"], tuple(options) if options is not None else None, answer)


def read_questions(path: str | Path, *, skip_bad: bool = False) -> tuple[list[Question], list[str]]:
    """The questions in a JSONL file and a message per bad line. A bad line is an error unless `skip_bad`;
    blank lines are ignored."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"questions file {path} does not exist")
    questions, bad = [], []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            questions.append(parse_line(text, number, path.parent))
        except ValueError as error:
            bad.append(f"{path}: {error}")
    if bad and not skip_bad:
        raise ValueError("; ".join(bad) + " (fix these lines, or pass --skip-bad to leave them out)")
    if not questions:
        raise ValueError(f"{path} has no usable questions")
    return questions, bad

"""The earlytom_local task: multiple-choice questions about local clips, scored by chosen letter as MVBench is.

EARLYTOM_EVAL_DATA names a JSON file holding a list of {"video", "question", "options", "answer"}; a relative
video path is relative to that file. `answer` is an option's letter or its text."""

import os
from pathlib import Path

from earlytom.eval.answers import chosen_letter, expected_key, multiple_choice_prompt

DATA_ENV = "EARLYTOM_EVAL_DATA"


def questions_file() -> Path:
    value = os.environ.get(DATA_ENV)
    if not value:
        raise ValueError(
            f"the earlytom_local task reads its questions from ${DATA_ENV}: set it to a JSON file with a list of "
            '{"video", "question", "options", "answer"}'
        )
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"{DATA_ENV} = {value}: no such file; point it at the questions JSON file")
    return path


# Read by the task YAML when the task is loaded (`!function utils.data_files`): where the questions are.
data_files = {"test": str(questions_file())}


def doc_to_visual(doc: dict) -> list[str]:
    return [str(questions_file().parent / doc["video"])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return multiple_choice_prompt(doc["question"], doc["options"])


def process_results(doc: dict, results: list[str]) -> dict:
    """accuracy: 1.0 when the reply chooses the answer's letter, else 0.0."""
    chosen = chosen_letter(results[0], doc["options"])
    return {"accuracy": float(chosen == expected_key(doc["answer"], doc["options"]))}

"""Multiple-choice prompts and answers, as MVBench scores them in lmms-eval: options are lettered (A), (B), ...
and a reply counts by the letter it chooses. Free-text replies compare by their first line."""

import re
import string

POST_PROMPT = "Only give the best option."
LETTERS = string.ascii_uppercase


def multiple_choice_prompt(question: str, options: list[str] | tuple[str, ...]) -> str:
    """MVBench's prompt: the question, the lettered options, then the instruction to answer with one."""
    lines = [f"({LETTERS[i]}) {option}" for i, option in enumerate(options)]
    return "\n".join([f"Question: {question}", "Options:", *lines, POST_PROMPT])


def first_line(text: str) -> str:
    """The reply's first non-empty line, stripped ('' for an empty reply)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def chosen_letter(text: str, options: list[str] | tuple[str, ...]) -> str | None:
    """The option a reply chooses: a leading letter ("B", "(B)", "B. ...", "B) ..."), else the first stand-alone
    option letter in its first line, else the option whose text the first line equals; None if none."""
    line = first_line(text)
    valid = LETTERS[: len(options)]
    lead = re.match(rf"^\(?([{valid}])(?:$|[\s.):,])", line)
    if lead:
        return lead.group(1)
    alone = re.search(rf"\b([{valid}])\b", line)
    if alone:
        return alone.group(1)
    folded = [o.strip().casefold() for o in options]
    return valid[folded.index(line.casefold())] if line.casefold() in folded else None


def answer_key(text: str, options: list[str] | tuple[str, ...] | None) -> str:
    """What two replies must share to agree: the chosen letter for multiple choice ('' when none is chosen),
    else the first line."""
    if options is None:
        return first_line(text)
    return chosen_letter(text, options) or ""


def expected_key(answer: str, options: list[str] | tuple[str, ...] | None) -> str:
    """A reference answer as a key: for multiple choice a letter, or an option's text turned into its letter."""
    if options is None:
        return first_line(answer)
    stripped = answer.strip()
    if stripped.upper() in LETTERS[: len(options)] and len(stripped) == 1:
        return stripped.upper()
    folded = [o.strip().casefold() for o in options]
    if stripped.casefold() not in folded:
        raise ValueError(
            f"answer {answer!r} is neither an option letter (A-{LETTERS[len(options) - 1]}) nor one of the options"
        )
    return LETTERS[folded.index(stripped.casefold())]

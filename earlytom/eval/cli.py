"""`earlytom compare QUESTIONS.jsonl (--engine DIR | --model NAME)`: answer agreement and TTFT of compressed
settings against full tokens. `add_parser(subparsers)` registers the subcommand on the `earlytom` command line;
`python -m earlytom.eval.cli compare ...` runs it on its own."""

import argparse
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

from earlytom.command_line import add_stream_arg
from earlytom.eval import compare
from earlytom.eval.questions import read_questions
from earlytom.runtime.backends.base import METHODS


def comma_list(convert, name: str):
    """An argparse type: "a,b,c" -> [convert(a), convert(b), convert(c)], refusing empty items by `name`."""

    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{name} {text!r}: an empty item; separate values with single commas")
        try:
            return [convert(item) for item in items]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{name} {text!r}: {error}") from error

    return parse


def method_name(text: str) -> str:
    if text not in METHODS:
        raise ValueError(f"{text!r} is no method; choose from {', '.join(METHODS)}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("questions", type=Path, help='JSONL: {"video", "question", "options"?, "answer"?} per line')
    parser.add_argument("--engine", type=Path, default=None, help="an engine directory written by build_engine")
    parser.add_argument("--model", default=None, help="a model name for the eager backend (with --engine: a check)")
    parser.add_argument("--random-init", action="store_true", help="random weights (latency work only)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default 32, or the engine's)")
    parser.add_argument(
        "--method",
        type=comma_list(method_name, "--method"),
        default=["earlytom"],
        help="compressed methods, comma-separated: earlytom, global_topk, fastvid, holitom, visionzip (default "
        "earlytom; the compared methods with their released parameters at each ratio); full always runs",
    )
    parser.add_argument(
        "--retain-ratio", type=comma_list(float, "--retain-ratio"), default=None, help="e.g. 0.10,0.15,0.25"
    )
    parser.add_argument("--variant", type=comma_list(str, "--variant"), default=None, help="e.g. official,paper")
    parser.add_argument("--preset", default=None, help="an EarlyTom preset, for every setting")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--plot", type=Path, default=None, help="write agreement vs TTFT (one point per setting)")
    parser.add_argument("--skip-bad", action="store_true", help="leave out bad lines (reported) instead of refusing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_stream_arg(parser, "each file's video stream with the most frames")


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: generate at least 1 token")
    questions, skipped = read_questions(args.questions, skip_bad=args.skip_bad)
    grid = compare.settings_grid(args.method, args.retain_ratio, args.variant)
    bases = compare.open_pipelines(
        args.variant,
        engine=args.engine,
        model=args.model,
        preset=args.preset,
        frames=args.frames,
        random_init=args.random_init,
    )
    pipelines = {setting: compare.pipeline_for(setting, bases) for setting in grid}
    answers = compare.run(
        questions, pipelines, max_new_tokens=args.max_new_tokens, progress=not args.no_progress, stream=args.stream
    )
    rows = compare.summarize(questions, answers)
    compare.report(rows, skipped=skipped, notes=compare.notes_of(answers), as_json=args.json)
    if args.plot is not None:
        compare.plot(rows, args.plot)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `compare` on the `earlytom` command line's subparsers."""
    parser = subparsers.add_parser("compare", help="answer agreement and TTFT of compressed settings vs full tokens")
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="earlytom")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

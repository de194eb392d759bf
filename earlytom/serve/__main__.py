"""`python -m earlytom.serve ...`: the same as `earlytom serve ...` (signals and errors handled as by every
command, from the first line of `main`)."""

import argparse
import sys

from earlytom.command_line import lazy_main


def load():
    from earlytom.serve.cli import add_arguments, serve

    parser = argparse.ArgumentParser(prog="earlytom serve", description="an OpenAI-compatible video chat server")
    add_arguments(parser)
    return parser, serve


def main(argv: list[str] | None = None) -> int:
    return lazy_main(load, argv)


if __name__ == "__main__":
    sys.exit(main())

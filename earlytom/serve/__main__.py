"""`python -m earlytom.serve ...`: the same as `earlytom serve ...`."""

import argparse
import sys

from earlytom.serve.cli import add_arguments, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="earlytom serve", description="an OpenAI-compatible video chat server")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

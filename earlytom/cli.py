"""`earlytom` command line.

earlytom run --model llava-ov-0.5b --video clip.mp4 --prompt "What happens?" [--json]
earlytom run --engine engines/ov7b --video clip.mp4 --prompt "What happens?"
earlytom demo        # the tiny model on a synthetic clip, end to end, on CPU

This module imports only the standard library and earlytom.command_line: Ctrl-C is handled from the first line of
`main`, before the subcommands (earlytom.commands: torch, transformers) are imported.
"""

import sys

from earlytom.command_line import lazy_main


def load():
    from earlytom import commands

    return commands.parser(), commands.dispatch


def main(argv: list[str] | None = None) -> int:
    return lazy_main(load, argv)


if __name__ == "__main__":
    sys.exit(main())

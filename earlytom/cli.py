"""`earlytom` command line.

earlytom run --model llava-ov-0.5b --video clip.mp4 --prompt "What happens?" [--json]
earlytom run --engine engines/ov7b --video clip.mp4 --prompt "What happens?"
earlytom demo        # the tiny model on a synthetic clip, end to end, on CPU
earlytom plan --model llava-ov-7b --frames 64 --target-gpu rtx4090   # will the engine fit? (configs only)
ffmpeg -i rtsp://camera/stream -f mpegts - | earlytom watch --video - --fps 2 --every 10 --prompt "Anyone at the door?"
earlytom explain --video clip.mp4 --model llava-ov-7b --retain-ratio 0.1,0.2 --out report.html   # what was kept

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

"""build_engine: the engine directory and its backends.

The `build_engine` command's entry point lives here, importing nothing heavy: Ctrl-C is handled from its first line,
before earlytom.engine_builder.build (torch, transformers, onnx) is imported.
"""

import sys

from earlytom.command_line import lazy_main


def load():
    from earlytom.engine_builder import build

    return build.parser(), build.run


def main(argv: list[str] | None = None) -> int:
    return lazy_main(load, argv)


if __name__ == "__main__":
    sys.exit(main())

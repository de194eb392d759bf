"""What the two command lines (`build_engine`, `earlytom`) share: the EarlyTom options and the one place where
errors become a single `error:` line and an exit status.

Exit status: 0 done, 2 bad input (the message names the value and the fix), 1 the environment failed (disk
full, permission denied, out of memory, a closed output pipe), 130 interrupted (Ctrl-C, SIGINT), 143 terminated
(SIGTERM). `--debug` shows the traceback instead. Both signals unwind the program (so a build removes its staging
directory) before the status is returned.

A command's `main` starts with `lazy_main`, which sets this up before the command's modules are imported (torch and
transformers take seconds): Ctrl-C at any moment is one line and 130. So this module imports only the standard
library at its top.
"""

import argparse
import contextlib
import errno
import os
import re
import signal
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from earlytom.compress import EarlyTomConfig

FIXES = {
    errno.ENOSPC: "free disk space or write elsewhere",
    errno.EDQUOT: "free disk space or write elsewhere",
    errno.EACCES: "choose a path you may write to",
    errno.EPERM: "choose a path you may write to",
    errno.EROFS: "choose a path on a writable file system",
}


def layer_list(text: str) -> tuple[int, ...]:
    """ "8,21,23" -> (8, 21, 23) (argparse type)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer indices, e.g. 8,21,23"
        ) from None


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The EarlyTom parameters; each left out takes the preset's value, else the variant's default."""
    g = parser.add_argument_group("EarlyTom (default: variant official, the authors' released method)")
    g.add_argument("--variant", choices=("official", "paper"), default=None, help="official (default) or paper")
    g.add_argument(
        "--preset",
        default=None,
        help="tau_seg and merge layers of a released evaluation script "
        "(mvbench, videomme, longvideobench, egoschema) for the retain ratio",
    )
    g.add_argument("--retain-ratio", type=float, default=None, help="r in (0, 1] (official 0.20, paper 0.15)")
    g.add_argument("--alpha", type=float, default=None, help="EMA weight in (0, 1] (official 0.9, paper 0.6)")
    g.add_argument("--tau-seg", type=float, default=None, help="segmentation threshold (official 0.5, paper 0.75)")
    g.add_argument("--tau-merge", type=float, default=None, help="paper only: merge threshold (0.80)")
    g.add_argument(
        "--merge-layers",
        type=layer_list,
        default=None,
        help="0-based encoder layers to compress after, e.g. 8,21,23 (paper: one layer)",
    )
    g.add_argument("--max-window", type=int, default=None, help="official only: window cap M (6)")
    g.add_argument("--inner-layer", type=int, default=None, help="decoder layer of the inner merge (18 of 28)")
    g.add_argument("--inner-ratio", type=float, default=None, help="share of visual tokens the inner merge removes")
    g.add_argument("--no-inner-merge", action="store_true", help="no inner merge in the decoder")


def parse_resolution(text: str) -> tuple[int, int]:
    """ "448x336" -> (448, 336): frame height x width in pixels (argparse type of --resolution)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH in pixels (e.g. 448x448)")
    return int(match[1]), int(match[2])


def config_fields(args: argparse.Namespace) -> dict:
    """The EarlyTom fields the options set: explicit options win over the preset's."""
    from earlytom.models.presets import preset_fields

    if args.no_inner_merge and args.inner_ratio is not None:
        raise ValueError("--no-inner-merge and --inner-ratio contradict each other; give one of them")
    names = (
        "variant",
        "alpha",
        "tau_seg",
        "tau_merge",
        "retain_ratio",
        "merge_layers",
        "max_window",
        "inner_layer",
        "inner_ratio",
    )
    explicit = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.no_inner_merge:
        explicit["inner_ratio"] = 0.0
    return preset_fields(args.preset, explicit, model=getattr(args, "model", None))


def config_from_args(args: argparse.Namespace) -> "EarlyTomConfig":
    """The EarlyTomConfig the options ask for (the variant's defaults for what they leave out)."""
    from earlytom.compress import EarlyTomConfig

    return EarlyTomConfig(**config_fields(args))


def add_stream_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--stream",
        type=int,
        default=None,
        metavar="N",
        help=f"the video's stream N, numbered as ffprobe lists its streams (default: {default})",
    )


def add_debug_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")


class Terminated(BaseException):
    """SIGTERM, raised where the program is, like KeyboardInterrupt for SIGINT, so that cleanups run."""


def raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds():
    """Within: SIGTERM raises Terminated (Python's default kills the process without running any cleanup)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def environment_fix(error: OSError) -> str:
    return FIXES.get(error.errno, "check the path, free space and permissions")


def interrupted(stop: BaseException) -> int:
    """One `error:` line for Ctrl-C (KeyboardInterrupt) or SIGTERM (Terminated); the exit status."""
    name, status = ("SIGTERM", 143) if isinstance(stop, Terminated) else ("Ctrl-C", 130)
    print(f"error: interrupted ({name}); nothing half-written was kept", file=sys.stderr)
    return status


def lazy_main(load, argv: list[str] | None) -> int:
    """The whole of a command's `main`: from here on SIGTERM unwinds and Ctrl-C ends in one line, also while
    `load()` imports the command and returns (its parser, its run function) for `run_main`."""
    with sigterm_unwinds():
        try:
            parser, run = load()
        except (KeyboardInterrupt, Terminated) as stop:
            return interrupted(stop)
        return run_main(parser, run, argv)


def run_main(parser: argparse.ArgumentParser, run, argv: list[str] | None) -> int:
    """Parse `argv`, call `run(args)`, and turn every failure into one `error:` line and an exit status."""
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        with sigterm_unwinds():
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            status = run(args)
            sys.stdout.flush()  # a closed pipe shows here, not after the status is decided
            return status
    except Exception as error:
        if debug:
            raise
        return report(error)
    except (KeyboardInterrupt, Terminated) as stop:
        if debug:
            raise
        return interrupted(stop)


def as_os_error(error: Exception) -> Exception:
    """`error`, or the OSError it stands for: one it was raised from, or the "(os error N)" that libraries written
    in Rust (safetensors, tokenizers) put in their messages."""
    cause = error.__cause__
    if isinstance(cause, OSError):
        return cause
    found = re.search(r"\(os error (\d+)\)", str(error))
    return OSError(int(found[1]), os.strerror(int(found[1]))) if found else error


def report(error: Exception) -> int:
    """One line on stderr for `error`; its exit status."""
    if isinstance(error, BrokenPipeError):  # e.g. `earlytom run ... | head -1`: stdout is gone, say it on stderr
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("error: the output pipe was closed before the result was written", file=sys.stderr)
        return 1
    if isinstance(error, ValueError):  # the project's own errors about its input name the value and the fix
        print(f"error: {error}", file=sys.stderr)
        return 2
    error = as_os_error(error)
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}; {environment_fix(error)}", file=sys.stderr)
        return 1
    if isinstance(error, MemoryError):
        print(
            "error: out of memory; use fewer --frames, a smaller model, or a machine with more memory", file=sys.stderr
        )
        return 1
    print(f"error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr)
    return 1

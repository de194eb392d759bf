"""`earlytom` command line: `earlytom demo` (more subcommands arrive with the engine builder and runtime)."""

import argparse
import sys

import torch

from earlytom.compress import EarlyTomConfig, frame_merge, token_select


def demo(args: argparse.Namespace) -> int:
    """Run FrameMerge and TokenSelect on synthetic hidden states of a clip with one scene cut."""
    config = EarlyTomConfig(retain_ratio=args.retain_ratio)
    g = torch.Generator().manual_seed(0)
    B, L, D, T = args.frames, 729, 64, 196
    scenes = torch.randn(2, L, D, generator=g)
    hidden = scenes[(torch.arange(B) >= B // 2).long()] + 0.3 * torch.randn(B, L, D, generator=g)  # [B, L, D]
    merged = frame_merge(hidden, alpha=config.alpha, tau_seg=config.tau_seg, tau_merge=config.tau_merge)
    N = merged.hidden.shape[0]
    selected = token_select(
        torch.randn(N, T, D, generator=g),
        torch.rand(N, T, generator=g),
        merged.is_static,
        retain_ratio=config.retain_ratio,
        num_frames=B,
    )
    print(f"EarlyTom {config.to_dict()}")
    print(f"FrameMerge:  {B} frames -> {N} ({int(merged.is_static.sum())} static, segments {merged.segment.tolist()})")
    print(f"TokenSelect: {N} x {T} tokens -> {len(selected.frame)} = round({config.retain_ratio} * {B} * {T})")
    print("The engine builder (build_engine) and the video runtime (earlytom run) are the next milestones.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="earlytom", description="EarlyTom Video-LLM runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the compression core on synthetic hidden states")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--retain-ratio", type=float, default=0.15)
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

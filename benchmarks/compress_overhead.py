"""Compression cost next to one SigLIP-so400m encoder layer, on this CPU: the official variant's
official_compress (one merge layer, with the final re-segmentation) and official_select, the paper variant's
frame_merge and token_select.

Goal: each op under 2% of one encoder layer over the same 32 frames of 729 tokens.
    python benchmarks/compress_overhead.py [--frames 32] [--repeats 5]
"""

import argparse

import torch
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

from benchmarks.common import median_ms, print_table
from earlytom.compress import frame_merge, official_compress, official_select, token_select

GOAL = 0.02


def video_like_hidden(B: int, L: int, D: int) -> torch.Tensor:
    """hidden [B, L, D] for a clip with slow drift and one scene cut, so FrameMerge has work to do."""
    g = torch.Generator().manual_seed(0)
    scene = [torch.randn(L, D, generator=g), torch.randn(L, D, generator=g)]
    drift = torch.randn(B, L, D, generator=g) * torch.rand(B, 1, 1, generator=g) * 0.5
    return torch.stack([scene[t >= B // 2] for t in range(B)]) + drift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--retain-ratio", type=float, default=0.15)
    args = parser.parse_args()
    torch.manual_seed(0)
    B, L, D, T, D_llm = args.frames, 729, 1152, 196, 896

    config = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_attention_heads=16)
    config._attn_implementation = "sdpa"
    layer = SiglipEncoderLayer(config).eval()
    hidden = video_like_hidden(B, L, D)
    with torch.inference_mode():
        layer_ms = median_ms(lambda: layer(hidden, attention_mask=None), repeats=max(1, args.repeats // 2))
        merged = frame_merge(hidden)
        merge_ms = median_ms(lambda: frame_merge(hidden), repeats=args.repeats)
        N = merged.hidden.shape[0]
        tokens, scores = torch.randn(N, T, D_llm), torch.rand(N, T)
        select = lambda: token_select(tokens, scores, merged.is_static, retain_ratio=args.retain_ratio, num_frames=B)  # noqa: E731
        select_ms = median_ms(select, repeats=args.repeats)
        attention = torch.softmax(torch.randn(B, L), dim=-1)
        official = lambda: official_compress(hidden, attention, tau_seg=0.5, final=True)  # noqa: E731
        compressed = official()
        compress_ms = median_ms(official, repeats=args.repeats)
        N_off = compressed.hidden.shape[0]
        tokens_off, scores_off = torch.randn(N_off, T, D_llm), torch.rand(N_off, T)
        select_off = lambda: official_select(  # noqa: E731
            tokens_off, scores_off, compressed.segments, retain_ratio=args.retain_ratio, num_frames=B
        )
        select_off_ms = median_ms(select_off, repeats=args.repeats)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; B = {B} -> N = {N_off} frames (official), "
        f"{N} (paper)\n"
    )

    def row(name: str, ms: float) -> list:
        return [name, ms, f"{ms / layer_ms:.2%}", "yes" if ms < GOAL * layer_ms else "NO"]

    rows = [
        [f"SigLIP-so400m encoder layer [{B}, {L}, {D}]", layer_ms, "", ""],
        row(f"official_compress [{B}, {L}, {D}] (final)", compress_ms),
        row(f"official_select [{N_off}, {T}, {D_llm}]", select_off_ms),
        row(f"frame_merge [{B}, {L}, {D}]", merge_ms),
        row(f"token_select [{N}, {T}, {D_llm}]", select_ms),
    ]
    print_table(["op", "median ms", "of one layer", f"< {GOAL:.0%}"], rows)


if __name__ == "__main__":
    main()

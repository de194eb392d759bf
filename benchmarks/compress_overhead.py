"""FrameMerge and TokenSelect cost next to one SigLIP-so400m encoder layer, on this CPU.

Goal: each op under 2% of one encoder layer over the same 32 frames of 729 tokens.
    python benchmarks/compress_overhead.py [--frames 32] [--repeats 5]
"""

import argparse

import torch
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

from benchmarks.common import median_ms, print_table
from earlytom.compress import frame_merge, token_select

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

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B = {B} -> N = {N} frames after merge\n")
    rows = [
        [f"SigLIP-so400m encoder layer [{B}, {L}, {D}]", layer_ms, "", ""],
        [
            f"frame_merge [{B}, {L}, {D}]",
            merge_ms,
            f"{merge_ms / layer_ms:.2%}",
            "yes" if merge_ms < GOAL * layer_ms else "NO",
        ],
        [
            f"token_select [{N}, {T}, {D_llm}]",
            select_ms,
            f"{select_ms / layer_ms:.2%}",
            "yes" if select_ms < GOAL * layer_ms else "NO",
        ],
    ]
    print_table(["op", "median ms", "of one layer", f"< {GOAL:.0%}"], rows)


if __name__ == "__main__":
    main()

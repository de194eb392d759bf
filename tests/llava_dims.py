"""Vision dims of LLaVA-OneVision-shaped models written out by hand (square frames, one frame per unit, the
image_newline suffix), for tests of what the engine format computes from dims."""

from earlytom.models.backbone import VisionDims


def llava_dims(size: int, **dims: int) -> VisionDims:
    """size: frame side S; dims: patch_tokens, hidden, llm_hidden, tokens_per_frame, encoder_layers, heads."""
    return VisionDims("llava_onevision", (size, size), 1, (3, size, size), suffix_tokens=1, **dims)


# LLaVA-OV-7B: 384 px, 27 x 27 patches, SigLIP width 1152 and 16 heads, 26 layers used, Qwen2-7B width 3584.
OV_DIMS = llava_dims(
    384, patch_tokens=729, hidden=1152, llm_hidden=3584, tokens_per_frame=196, encoder_layers=26, heads=16
)

"""The official variant's whole-video similarities equal the streaming form's bit for bit whatever the memory layout
of the hidden states: SigLIP's eager hidden states are channels-first in memory (strides (L*D, 1, L)), and at
LLaVA-OneVision's sizes (several token blocks) a reduction over a strided row rounds differently from one over a
contiguous row. Found: 47 of 60 pairs 1 ulp apart before both forms read frames token-major."""

import pytest
import torch

from earlytom.compress.official import BufferedFrame, window_similarity


@pytest.mark.parametrize("tokens,dim", [(729, 1152), (196, 896), (9, 4)])
@pytest.mark.parametrize("layout", ["channels_first", "contiguous"])
def test_window_similarity_is_the_streamed_pairs_bit_for_bit(tokens, dim, layout):
    generator = torch.Generator().manual_seed(tokens)
    frames = 5
    if layout == "channels_first":
        hidden = torch.randn(frames, dim, tokens, generator=generator).transpose(1, 2)
    else:
        hidden = torch.randn(frames, tokens, dim, generator=generator)
    hidden[3] = hidden[2]  # an exact repeat: cosine 1 within rounding, in both forms alike
    whole = window_similarity(hidden, frames - 1)
    streamed = [BufferedFrame.of(hidden[i], None) for i in range(frames)]
    for i in range(frames):
        for d in range(1, frames):
            if i >= d:
                pair = torch.tensor(streamed[i - d].cosine(streamed[i]), dtype=torch.float32)
                assert torch.equal(pair, whole[i, d - 1]), (i, d)
            else:
                assert torch.isnan(whole[i, d - 1])

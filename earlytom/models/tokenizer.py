"""A byte-level tokenizer built in code, for checkpoints without one (tiny, random-init)."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BYTES = 256  # ids 0-255 are the bytes; the special tokens follow in their given order


def byte_level_tokenizer(special_tokens: tuple[str, ...], chat_template: str, eos_id: int) -> PreTrainedTokenizerFast:
    """Every UTF-8 byte is one token (no merges), then `special_tokens` (ids 256 ...): the first is the BOS token,
    the one with id `eos_id` the EOS token, "<pad>" (if listed) the padding token."""
    if not BYTES <= eos_id < BYTES + len(special_tokens):
        raise ValueError(f"eos_token_id = {eos_id} is none of the stand-in tokenizer's special tokens (ids 256 ...)")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=special_tokens[0],
        eos_token=special_tokens[eos_id - BYTES],
        pad_token="<pad>" if "<pad>" in special_tokens else None,
        chat_template=chat_template,
    )

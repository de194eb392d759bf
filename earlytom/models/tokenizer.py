"""A byte-level tokenizer built in code, for checkpoints without one (tiny, random-init)."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def byte_level_tokenizer(special_tokens: tuple[str, ...], chat_template: str, eos: str) -> PreTrainedTokenizerFast:
    """Every UTF-8 byte is one token (no merges), then `special_tokens` (ids 256 ...): the first is the BOS token,
    `eos` (one of them) the EOS token, "<pad>" (if listed) the padding token."""
    if eos not in special_tokens:
        raise ValueError(f"eos = {eos!r} is none of the special tokens {special_tokens}")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=special_tokens[0],
        eos_token=eos,
        pad_token="<pad>" if "<pad>" in special_tokens else None,
        chat_template=chat_template,
    )

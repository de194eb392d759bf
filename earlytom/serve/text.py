"""Answer text as the client sees it: cut at the first stop string, and, while streaming, released token by token
without splitting a multi-byte character or showing the start of a stop string that may still complete."""


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """(text up to the stop string that is complete first, whether one is). Read character by character, the answer
    ends at the start of the first stop string to complete (the longest, if several complete with one character):
    the same cut whether the text arrives whole or token by token. ("aba" with stop ["aba", "b"] -> "a".)"""
    hits = [(i + len(s), -len(s)) for s in stop if (i := text.find(s)) >= 0]  # (end, -length) of each first hit
    if not hits:
        return text, False
    end, minus_length = min(hits)
    return text[: end + minus_length], True


def stop_prefix_length(text: str, stop: list[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop string (0 if none)."""
    return max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


class TextStream:
    """Feed generated token ids one at a time; each `push` returns the text that became final with it.
    `finish(text)` returns the rest of the answer `text`, so the pushed deltas plus it equal `visible(text)`."""

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def visible(self, text: str) -> str:
        return cut_at_stop(text, self.stop)[0]

    def release(self, text: str) -> str:
        """Append `text`'s new part beyond what was sent (nothing if `text` does not extend it)."""
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # maybe a character whose remaining bytes are still to come
            return ""
        text, self.stopped = cut_at_stop(text, self.stop)
        held = 0 if self.stopped else stop_prefix_length(text, self.stop)
        return self.release(text[: len(text) - held])

    def finish(self, text: str) -> str:
        return self.release(self.visible(text))

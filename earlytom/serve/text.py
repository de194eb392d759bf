"""Answer text as the client sees it: cut at the first stop string, and, while streaming, released token by token
without splitting a multi-byte character or showing the start of a stop string that may still complete."""


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """(text up to the earliest stop string, whether one occurred)."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


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

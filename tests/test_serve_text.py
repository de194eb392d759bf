"""Streamed answer text: token-by-token deltas add up to the whole answer, cut at the first stop string, never
showing half a character or the start of a stop string that later completes. Also the `serve` command line."""

import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from earlytom.models.llava_onevision import FAMILY
from earlytom.models.tokenizer import byte_level_tokenizer
from earlytom.serve.text import TextStream, cut_at_stop, stop_prefix_length

TOKENIZER = byte_level_tokenizer(FAMILY.special_tokens, FAMILY.chat_template, eos="<|im_end|>")
EOS = TOKENIZER.eos_token_id


def ids(text: str) -> list[int]:
    """One id per UTF-8 byte."""
    return TOKENIZER(text, add_special_tokens=False).input_ids


# Any byte or special token (256-261), biased to the bytes of the stop strings' characters.
TOKEN = st.one_of(st.sampled_from(ids("ab\u00e9\u20acx ")), st.integers(0, 261))


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(TOKEN, min_size=1, max_size=40),
    stop=st.lists(st.text("ab\u00e9\u20ac", min_size=1, max_size=3), max_size=4),
)
def test_streamed_deltas_add_up_to_the_visible_answer(ids, stop):
    stream = TextStream(TOKENIZER, stop)
    deltas = [stream.push(i) for i in ids]
    whole = TOKENIZER.decode(ids, skip_special_tokens=True)
    visible, stopped = cut_at_stop(whole, stop)
    streamed = "".join(deltas)
    assert visible.startswith(streamed)
    for end in range(1, len(deltas) + 1):  # nothing released ever goes past a stop string
        assert not any(s in "".join(deltas[:end]) for s in stop)
    assert streamed + stream.finish(whole) == visible
    assert stopped or not stream.stopped  # never claims a stop string that is not there


def test_a_multibyte_character_is_released_whole():
    stream = TextStream(TOKENIZER, [])
    assert [stream.push(i) for i in ids("\u20ac")] == ["", "", "\u20ac"]


def test_a_stop_string_prefix_is_held_until_it_fails_to_complete():
    stream = TextStream(TOKENIZER, ["ab"])
    assert [stream.push(i) for i in ids("xaz")] == ["x", "", "az"]
    assert [stream.push(i) for i in ids("abc")] == ["", "", ""] and stream.stopped


def test_stop_prefix_length():
    assert stop_prefix_length("hello wor", ["world", "or"]) == 3
    assert stop_prefix_length("hello", ["xyz"]) == 0


def serve_parser() -> argparse.ArgumentParser:
    from earlytom.serve.cli import add_parser

    parser = argparse.ArgumentParser(prog="earlytom")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_serve_subcommand_registers_its_flags_and_handler():
    args = serve_parser().parse_args(["serve", "--model", "tiny", "--port", "9001", "--max-queue", "3"])
    from earlytom.serve.cli import serve

    assert (args.func, args.model, args.port, args.max_queue, args.host) == (serve, "tiny", 9001, 3, "127.0.0.1")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "pass --engine DIR"),
        (["--model", "tiny", "--replicas", "2"], "need --ray"),
        (["--model", "tiny", "--max-queue", "-1"], "--max-queue = -1"),
        (["--model", "tiny", "--max-video-bytes", "0"], "--max-video-bytes = 0"),
        (["--model", "tiny", "--allowed-local-media-path", "/nonexistent/dir"], "is not a directory"),
        (["--engine", "/nonexistent", "--random-init"], "--random-init is fixed"),
    ],
)
def test_bad_serve_flags_are_one_error_line(argv, message, capsys):
    pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
    from earlytom.serve.__main__ import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1

"""Streamed answer text: token-by-token deltas add up to the whole answer, cut at the earliest stop string,
never showing half a character or the start of a stop string that later completes. Expected texts are written by
hand or found by a plain loop here (`earliest_cut`), never by the functions under test. Also the `serve` command
line."""

import argparse
import socket

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


def earliest_cut(text: str, stop: list[str]) -> tuple[str, bool]:
    """The oracle: read the text one character at a time; as soon as a stop string is complete, cut at its start
    (at the start of the longest, when one character completes several)."""
    for end in range(1, len(text) + 1):
        complete = [s for s in stop if text[:end].endswith(s)]
        if complete:
            return text[: end - max(map(len, complete))], True
    return text, False


@st.composite
def stop_lists(draw, text: str):
    """0-4 stop strings, most of them pieces of `text` (so they hit, often several at once and overlapping), some
    random, and sometimes one of them twice."""
    piece = st.integers(0, max(len(text) - 1, 0)).flatmap(lambda i: st.integers(i + 1, i + 3).map(lambda j: text[i:j]))
    random = st.text("ab\u00e9\u20ac", min_size=1, max_size=3)
    stop = draw(st.lists(piece.filter(bool) | random if text else random, max_size=4))
    if stop and len(stop) < 4 and draw(st.booleans()):
        stop.append(draw(st.sampled_from(stop)))  # a repeated stop string
    return stop


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(TOKEN, min_size=1, max_size=40), data=st.data())
def test_streamed_deltas_add_up_to_the_visible_answer(ids, data):
    whole = TOKENIZER.decode(ids, skip_special_tokens=True)
    stop = data.draw(stop_lists(whole))
    stream = TextStream(TOKENIZER, stop)
    deltas = [stream.push(i) for i in ids]
    visible, stopped = earliest_cut(whole, stop)
    assert cut_at_stop(whole, stop) == (visible, stopped)
    streamed = "".join(deltas)
    assert visible.startswith(streamed)
    for end in range(1, len(deltas) + 1):  # nothing released ever goes past a stop string
        assert not any(s in "".join(deltas[:end]) for s in stop)
    assert streamed + stream.finish(whole) == visible
    assert stopped or not stream.stopped  # never claims a stop string that is not there


@pytest.mark.parametrize(
    "text, stop, expected",
    [
        ("abcabc", ["bc", "ca"], "a"),  # "bc" hits at 1, "ca" at 2
        ("abcabc", ["ca", "bc"], "a"),  # the list's order does not matter, the text's does
        ("hello world", ["world", "lo w"], "hel"),  # the later-listed stop string hits first
        ("hello world", ["o"], "hell"),  # a stop string that occurs twice: its first occurrence
        ("banana", ["na", "an", "na"], "b"),  # repeated in the list, overlapping in the text
        ("overlap", ["lap", "erl"], "ov"),
        ("aaaa", ["aa"], ""),  # at the very start
        ("x. y. z.", [". ", "."], "x"),  # two stop strings hitting at the same position
        ("caf\u00e9 \u20ac5", ["\u20ac", "\u00e9"], "caf"),
        ("aba", ["aba", "b"], "a"),  # "b" is complete first: the generation ends there, before "aba" could
        ("xaby", ["xaby", "ab"], "x"),
        ("abc", ["bc", "abc"], ""),  # both complete with "c": the longer one starts earlier
        ("abcd", ["abcd", "bc"], "a"),
    ],
)
def test_the_earliest_stop_string_wins(text, stop, expected):
    assert cut_at_stop(text, stop) == (expected, True)


@pytest.mark.parametrize("text, stop", [("no stop here", ["xyz", "Here"]), ("ab", []), ("", ["a"])])
def test_text_without_a_stop_string_is_kept_whole(text, stop):
    assert cut_at_stop(text, stop) == (text, False)


def test_a_stream_stops_at_the_earliest_of_repeated_and_overlapping_stop_strings():
    stream = TextStream(TOKENIZER, ["c d", "b c", "b c"])
    deltas = [stream.push(i) for i in ids("a b c d e")]
    assert "".join(deltas) == "a " and stream.stopped
    assert stream.finish("a b c d e") == ""


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


def test_a_port_in_use_is_one_error_line_before_the_model_loads(capsys):
    pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
    from earlytom.serve.__main__ import main

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        status = main(["--model", "no-such-model", "--port", str(port)])  # a model that would fail to load
    err = capsys.readouterr().err
    assert status == 2
    assert err == (
        f"error: cannot listen on --host 127.0.0.1 --port {port}: Address already in use; choose another --port, "
        "or stop the program listening on it\n"
    )


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

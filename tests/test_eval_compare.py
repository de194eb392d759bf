"""earlytom compare: multiple-choice keys, the questions file, the settings grid, and the whole command on
synthetic clips with the tiny model (full tokens agree with themselves; visual token counts; bad lines)."""

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earlytom.eval import cli, compare
from earlytom.eval.answers import answer_key, chosen_letter, expected_key, multiple_choice_prompt
from earlytom.eval.backend import open_pipeline
from earlytom.eval.questions import read_questions
from earlytom.runtime.synthetic import moving_square_frames, write_clip

OPTIONS = ["a square", "a circle", "nothing"]
words = st.text(alphabet=string.ascii_lowercase + " ", min_size=3, max_size=12).map(str.strip).filter(bool)


@pytest.mark.parametrize(
    "reply, letter",
    [("B", "B"), ("(C) nothing", "C"), ("A. a square", "A"), ("Answer: C", "C"), ("a circle", "B"), ("", None)],
)
def test_chosen_letter_reads_mvbench_style_replies(reply, letter):
    assert chosen_letter(reply, OPTIONS) == letter


def test_letters_beyond_the_options_are_not_choices():
    assert chosen_letter("D", OPTIONS) is None
    assert answer_key("D", OPTIONS) == ""


@given(st.lists(words, min_size=2, max_size=8, unique=True), st.data())
def test_a_reply_naming_an_option_keys_to_its_letter(options, data):
    index = data.draw(st.integers(0, len(options) - 1))
    letter = string.ascii_uppercase[index]
    assert answer_key(f"({letter}) {options[index]}\nbecause", options) == letter
    assert expected_key(options[index], options) == expected_key(letter, options) == letter
    assert f"({letter}) {options[index]}" in multiple_choice_prompt("q?", options)


def test_free_text_agrees_on_the_first_line():
    assert answer_key("\n  A red ball.  \nrolling", None) == answer_key("A red ball.", None) == "A red ball."


def test_an_answer_that_is_no_option_is_refused():
    with pytest.raises(ValueError, match="neither an option letter"):
        expected_key("a triangle", OPTIONS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder of synthetic clips (one with a scene cut) and a questions file next to them."""
    root = tmp_path_factory.mktemp("videos")
    (root / "clips").mkdir()
    write_clip(root / "clips" / "moving.mp4", moving_square_frames(16))
    write_clip(root / "clips" / "cut.mp4", moving_square_frames(16, cut_at=8))
    lines = [
        {"video": "clips/moving.mp4", "question": "What moves?", "options": OPTIONS, "answer": "A"},
        {"video": "clips/cut.mp4", "question": "What happens?"},
    ]
    (root / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_relative_videos_resolve_against_the_questions_file(folder):
    questions, bad = read_questions(folder / "questions.jsonl")
    assert bad == []
    assert [q.video for q in questions] == [folder / "clips" / "moving.mp4", folder / "clips" / "cut.mp4"]
    assert questions[0].options == tuple(OPTIONS) and questions[1].options is None


def test_bad_lines_are_refused_with_their_line_numbers_unless_skipped(folder):
    good = json.dumps({"video": "clips/moving.mp4", "question": "q"})
    path = write_lines(
        folder / "bad.jsonl",
        [
            good,
            "{not json",
            json.dumps({"video": "clips/missing.mp4", "question": "q"}),
            "",
            json.dumps({"video": "clips/cut.mp4", "question": "q", "options": ["x", "y"], "answer": "z"}),
            json.dumps({"video": "clips/cut.mp4", "question": "q", "extra": 1}),
        ],
    )
    with pytest.raises(ValueError) as refused:
        read_questions(path)
    message = str(refused.value)
    assert all(f"line {n}:" in message for n in (2, 3, 5, 6)) and "line 1:" not in message and "--skip-bad" in message
    questions, bad = read_questions(path, skip_bad=True)
    assert [q.line for q in questions] == [1] and len(bad) == 4


def test_the_grid_runs_full_tokens_first_and_variants_for_earlytom_only():
    grid = compare.settings_grid(["earlytom", "global_topk"], [0.1, 0.25], ["official", "paper"])
    assert grid[0] == compare.FULL
    assert len(grid) == 1 + 2 * 2 + 2
    assert all(s.variant is None for s in grid if s.method == "global_topk")
    with pytest.raises(ValueError, match="full tokens always run"):
        compare.settings_grid(["full"], None, None)


def test_summary_counts_agreement_and_accuracy(folder):
    questions, _ = read_questions(folder / "questions.jsonl")
    reply = lambda key, tokens, ms: compare.Answer(key, tokens, 4, ms)  # noqa: E731
    lower = compare.Setting("earlytom", 0.1)
    rows = compare.summarize(
        questions,
        {
            compare.FULL: [reply("B", 100, 40.0), reply("x", 100, 60.0)],
            lower: [reply("A", 10, 10.0), reply("x", 10, 30.0)],
        },
    )
    full, low = rows
    assert (full.agreement, full.accuracy, full.speedup) == (1.0, 0.0, 1.0)
    assert (low.agreement, low.accuracy, low.visual_tokens) == (0.5, 1.0, 10.0)
    assert low.ttft_ms_median == 20.0 and low.speedup == 2.5


def test_an_engine_directory_keeps_the_variant_it_was_built_with(tmp_path):
    with pytest.raises(ValueError, match="variant = 'paper'.*runs what it was built with"):
        open_pipeline(engine=tmp_path, variant="paper")


def test_compare_on_a_folder_of_clips(folder, capsys):
    frames = 8
    argv = ["compare", str(folder / "questions.jsonl"), "--model", "tiny", "--frames", str(frames)]
    argv += ["--retain-ratio", "0.1,0.5", "--variant", "paper", "--max-new-tokens", "4", "--json", "--no-progress"]
    assert cli.main([*argv, "--plot", str(folder / "plot.png")]) == 0
    rows = {row["setting"]: row for row in json.loads(capsys.readouterr().out)["settings"]}
    assert list(rows) == ["full", "earlytom r=0.1 paper", "earlytom r=0.5 paper"]
    full = rows["full"]
    assert full["agreement"] == 1.0 and full["speedup"] == 1.0
    assert full["visual_tokens"] == frames * 25 and full["frames_after_merge"] == frames
    assert full["accuracy"] in (0.0, 1.0)  # one question has an answer
    assert rows["earlytom r=0.1 paper"]["visual_tokens"] == round(0.1 * frames * 25)  # the paper's exact K
    assert rows["earlytom r=0.5 paper"]["visual_tokens"] == round(0.5 * frames * 25)
    assert all(0.0 <= row["agreement"] <= 1.0 and row["ttft_ms_median"] > 0 for row in rows.values())
    assert (folder / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_bad_lines_with_one_error_line(folder, capsys):
    path = write_lines(folder / "one_bad.jsonl", ["[]"])
    assert cli.main(["compare", str(path), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "line 1: expected a JSON object" in err and "Traceback" not in err

"""The lmms-eval path, offline: the `earlytom` model on the tiny model answering lmms-eval requests (video and
image documents), the earlytom_local task's scoring, and `python -m earlytom.eval` end to end on synthetic clips
with every hub unreachable."""

import glob
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is the optional [eval] extra")

from lmms_eval.api.instance import Instance  # noqa: E402
from PIL import Image  # noqa: E402

from earlytom.eval.launcher import TASKS_DIR  # noqa: E402
from earlytom.eval.lmms_model import EarlyTomLMM  # noqa: E402
from earlytom.runtime.synthetic import moving_square_frames, write_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 8
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # Anything that still tried the network would meet a closed port and fail the run.
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """questions.json (MVBench-style multiple choice) next to a folder of synthetic clips."""
    root = tmp_path_factory.mktemp("local_task")
    (root / "clips").mkdir()
    write_clip(root / "clips" / "moving.mp4", moving_square_frames(16))
    write_clip(root / "clips" / "cut.mp4", moving_square_frames(16, cut_at=8))
    docs = [
        {"video": "clips/moving.mp4", "question": "What moves?", "options": ["a square", "a circle"], "answer": "A"},
        {"video": "clips/cut.mp4", "question": "Is there a cut?", "options": ["no", "yes", "maybe"], "answer": "yes"},
    ]
    (root / "questions.json").write_text(json.dumps(docs))
    return root


def request(context: str, doc_to_visual, until=None) -> Instance:
    gen_kwargs = {"max_new_tokens": 3, "until": until or []}
    arguments = (context, gen_kwargs, doc_to_visual, 0, "t", "test")
    return Instance("generate_until", arguments, idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})


@pytest.fixture(scope="module")
def lmm():
    model = EarlyTomLMM(model="tiny", method="full", frames=FRAMES)
    model.task_dict = {"t": {"test": {0: {}}}}
    return model


def test_video_and_image_documents_are_answered_greedily(lmm, dataset):
    video = str(dataset / "clips" / "moving.mp4")
    frames = moving_square_frames(3)  # uint8 [3, H, W, 3]: the images, as the pipeline takes frames
    images = [Image.fromarray(frame) for frame in frames]
    replies = lmm.generate_until([request("What moves?", lambda doc: [video]), request("Which?", lambda doc: images)])
    # same frames, same greedy tokens as the pipeline itself
    assert replies == [
        lmm.pipeline.generate(video, "What moves?", 3).text.strip(),
        lmm.pipeline.generate(frames, "Which?", 3).text.strip(),
    ]


def test_a_stop_string_ends_the_reply(lmm, dataset):
    video = str(dataset / "clips" / "moving.mp4")
    full = lmm.generate_until([request("What moves?", lambda doc: [video])])[0]
    assert len(full) >= 2, "the tiny model's reply must have a character to stop at"
    stop = full[1]
    cut = lmm.generate_until([request("What moves?", lambda doc: [video], until=[stop])])[0]
    assert cut == full[: full.index(stop)].strip()


def test_unsupported_requests_are_refused_with_the_reason(lmm):
    with pytest.raises(NotImplementedError, match="generate_until"):
        lmm.loglikelihood([])
    with pytest.raises(ValueError, match="no visual input"):
        lmm.generate_until([request("text only", lambda doc: [])])
    with pytest.raises(ValueError, match="one request at a time"):
        EarlyTomLMM(model="tiny", batch_size=4)


def local_task_utils(dataset: Path, monkeypatch):
    """The earlytom_local task's utils.py, loaded as lmms-eval loads it (it reads EARLYTOM_EVAL_DATA)."""
    monkeypatch.setenv("EARLYTOM_EVAL_DATA", str(dataset / "questions.json"))
    spec = importlib.util.spec_from_file_location("local_utils", TASKS_DIR / "earlytom_local" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    return utils


def test_local_task_scores_the_chosen_letter(dataset, monkeypatch):
    utils = local_task_utils(dataset, monkeypatch)
    doc = json.loads((dataset / "questions.json").read_text())[1]
    assert utils.doc_to_visual(doc) == [str(dataset / "clips" / "cut.mp4")]
    assert "(B) yes" in utils.doc_to_text(doc)
    assert utils.process_results(doc, ["(B) yes"]) == {"accuracy": 1.0}
    assert utils.process_results(doc, ["A"]) == {"accuracy": 0.0}


def test_lmms_eval_end_to_end_offline(dataset, tmp_path, monkeypatch):
    env = os.environ | OFFLINE
    env |= {"HF_HOME": str(tmp_path / "hf"), "EARLYTOM_EVAL_DATA": str(dataset / "questions.json")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = tmp_path / "out"
    args = ["--model", "earlytom", "--model_args", f"model=tiny,frames={FRAMES},method=earlytom,retain_ratio=0.2"]
    args += ["--tasks", "earlytom_local", "--output_path", str(out), "--log_samples"]
    run = subprocess.run(
        [sys.executable, "-m", "earlytom.eval", *args], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    found = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    assert found, f"no results written; lmms-eval said:\n{run.stdout[-3000:]}"
    results = json.loads(Path(found[0]).read_text())
    assert results["n-samples"]["earlytom_local"]["effective"] == 2
    logged = glob.glob(str(out / "**" / "*_samples_earlytom_local.jsonl"), recursive=True)
    samples = [json.loads(line) for line in Path(logged[0]).read_text().splitlines()]
    # The oracle: the same pipeline, in this process, on each logged prompt (the task asks for 16 new tokens).
    docs = json.loads((dataset / "questions.json").read_text())
    pipeline = EarlyTomLMM(model="tiny", frames=FRAMES, method="earlytom", retain_ratio=0.2).pipeline
    runs = [pipeline.generate(dataset / docs[s["doc_id"]]["video"], s["input"], 16) for s in samples]
    assert [s["filtered_resps"] for s in samples] == [r.text.strip() for r in runs]
    utils = local_task_utils(dataset, monkeypatch)
    scores = [utils.process_results(docs[s["doc_id"]], [s["filtered_resps"]]) for s in samples]
    assert [s["accuracy"] for s in samples] == [score["accuracy"] for score in scores]
    assert results["results"]["earlytom_local"]["accuracy,none"] == sum(s["accuracy"] for s in samples) / 2
    speed = results["throughput"]  # logged per sample by the model, averaged by lmms-eval
    for name in ("frames_in", "frames_after_merge", "visual_tokens", "visual_embeds_after_inner"):
        assert speed[f"avg_{name}"] == sum(r.counts[name] for r in runs) / 2, name
    assert speed["avg_frames_in"] == FRAMES
    assert speed["total_gen_tokens"] == sum(len(r.token_ids) for r in runs)

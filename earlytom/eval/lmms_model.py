"""lmms-eval model `earlytom`: answers lmms-eval's generate_until requests with an EarlyTom pipeline and logs,
per sample, the visual tokens sent, the frames left after merging and the time to first token.

model_args: engine=DIR or model=NAME (eager), method=earlytom|full|global_topk|fastvid|holitom|visionzip (the
compared methods with their released parameters at the retain ratio), variant, preset, retain_ratio,
frames (default: 32 eager, as lmms-eval's llava_onevision samples; an engine directory's build maximum),
max_new_tokens (default: the task's, else 32), random_init (eager only). Answers are greedy, as in the
released evaluation, whatever the task's sampling settings."""

import time

import numpy as np
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger
from PIL import Image
from tqdm import tqdm

from earlytom.eval.backend import open_pipeline
from earlytom.runtime.pipeline import Pipeline

MODEL_NAME = "earlytom"
DEFAULT_MAX_NEW_TOKENS = 32


def frames_from_images(images: list[Image.Image]) -> np.ndarray:
    """An image document's images -> uint8 frames [N, H, W, 3] (all resized to the first image's size)."""
    size = images[0].size
    return np.stack([np.asarray(image.convert("RGB").resize(size, Image.BICUBIC)) for image in images])


def video_source(visual: list) -> str | np.ndarray:
    """What doc_to_visual returned -> what Pipeline.generate takes: a video path, or the images as frames."""
    if not visual:
        raise ValueError("the earlytom model answers about videos and images; this document has no visual input")
    if isinstance(visual[0], str):
        if len(visual) > 1:
            raise ValueError(f"a document with {len(visual)} videos; the earlytom model takes one video per question")
        return visual[0]
    if all(isinstance(v, Image.Image) for v in visual):
        return frames_from_images(visual)
    raise ValueError(f"doc_to_visual returned {type(visual[0]).__name__}; expected a video path or PIL images")


def cut_at_stop(text: str, until: list[str]) -> str:
    """The reply up to the first of the task's stop strings."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class EarlyTomLMM(lmms):
    is_simple = True

    def __init__(
        self,
        engine: str | None = None,
        model: str | None = None,
        method: str = "earlytom",
        variant: str | None = None,
        preset: str | None = None,
        retain_ratio: float | None = None,
        frames: int | None = None,
        max_new_tokens: int | None = None,
        random_init: bool = False,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__()
        if str(batch_size) != "1":
            raise ValueError(f"batch_size = {batch_size}: the earlytom model answers one request at a time; use 1")
        if device is not None:
            raise ValueError(
                f"device = {device!r}: the backend picks its device (an engine directory its build's, the eager "
                "model the CPU); leave --device out"
            )
        if max_new_tokens is not None and int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens = {max_new_tokens}: generate at least 1 token")
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.pipeline: Pipeline = open_pipeline(
            engine=engine,
            model=None if model is None else str(model),
            method=method,
            variant=variant,
            preset=preset,
            retain_ratio=None if retain_ratio is None else float(retain_ratio),
            frames=None if frames is None else int(frames),
            random_init=bool(random_init),
        )
        self.noted: set[str] = set()

    def answer(self, request: Instance) -> str:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        visual = doc_to_visual(self.task_dict[task][split][doc_id])
        max_new_tokens = self.max_new_tokens
        if max_new_tokens is None:
            max_new_tokens = int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        start = time.perf_counter()
        result = self.pipeline.generate(video_source(visual), context, max_new_tokens)
        seconds = time.perf_counter() - start
        for note in set(result.notes) - self.noted:
            logger.warning(note)
        self.noted.update(result.notes)
        tokens = len(result.token_ids)
        log_metrics(
            total_elapsed_time=seconds,
            total_gen_tokens=tokens,
            avg_speed=tokens / seconds,
            additional_metrics={"ttft_ms": result.timings_ms["ttft"], **result.counts},
        )
        return cut_at_stop(result.text, gen_kwargs.get("until", [])).strip()

    def generate_until(self, requests: list[Instance]) -> list[str]:
        return [self.answer(request) for request in tqdm(requests, desc="earlytom", disable=self.rank != 0)]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "the earlytom model answers by generation (generate_until), as lmms-eval's video benchmarks "
            "(VideoMME, MVBench, EgoSchema, LongVideoBench) score it; loglikelihood tasks are not supported"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "the earlytom model answers single-round questions; multi-round tasks are not supported"
        )

"""The backends a pipeline composes: `eager` (transformers), `onnxruntime` and `tensorrt` (engine directories),
siblings behind the protocol in `base`. `open_engine_dir` opens the backend a verified directory was built for."""

from pathlib import Path

from earlytom.engine.directory import EngineDir, open_dir
from earlytom.engine.manifest import EngineDirError
from earlytom.environment import missing_gpu_stack
from earlytom.runtime.backends.base import Text


def engine_text(engine: EngineDir) -> Text:
    tokenizer, family = engine.tokenizer, engine.family
    return Text(
        tokenizer, tokenizer.chat_template, family.placeholder, engine.processor, engine.manifest.vision, engine.notes
    )


def open_engine_dir(directory: str | Path, *, model: str | None = None, providers=None, trusted_key=None):
    """The backend of an engine directory, after finishing any interrupted replacement of it and verifying its
    manifest (refused if tampered, incomplete, built for another `model`, or not signed by `trusted_key`, a PEM
    ed25519 public key file, when given). `providers` (onnxruntime.Providers, None: CPU) choose where an
    onnxruntime directory's graphs run; TensorRT engines refuse them."""
    engine = open_dir(directory, model=model, trusted_key=trusted_key)
    if engine.manifest.backend == "tensorrt":
        if providers is not None:
            raise EngineDirError(
                f"{directory} holds TensorRT engines, which always run on the GPU; drop --providers (it chooses "
                "where an onnxruntime directory runs)"
            )
        missing = missing_gpu_stack()
        if missing:
            raise EngineDirError(
                f"{directory} holds TensorRT engines, which need {', '.join(missing)}; run it on the GPU "
                "machine it was built for, or build an onnxruntime directory for this one"
            )
        from earlytom.runtime.backends.tensorrt import TensorRTBackend  # pragma: no cover - GPU only

        return TensorRTBackend(engine, engine_text(engine))  # pragma: no cover - GPU only
    from earlytom.runtime.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(engine, engine_text(engine), providers)

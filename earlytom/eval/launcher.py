"""`python -m earlytom.eval ARGS`: lmms-eval's own command line with the `earlytom` model registered and this
package's tasks (earlytom_local) on the include path; every argument goes to lmms-eval unchanged."""

import sys
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"
MODEL_CLASS = "earlytom.eval.lmms_model.EarlyTomLMM"


def manifest():
    """The `earlytom` model for lmms-eval's registry (also its `lmms_eval.models` entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="earlytom", simple_class_path=MODEL_CLASS)


def register() -> None:
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)


def main(argv: list[str] | None = None) -> int:
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        print("error: lmms-eval is not installed; pip install 'earlytom[eval]'", file=sys.stderr)
        return 2
    register()
    from lmms_eval.__main__ import cli_evaluate, parse_eval_args

    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    _, args = parse_eval_args()
    args.include_path = [str(TASKS_DIR), *([args.include_path] if args.include_path else [])]
    cli_evaluate(args)
    return 0

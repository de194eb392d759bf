"""Accuracy you can measure: an lmms-eval model backed by this project (`python -m earlytom.eval`, optional
extra `[eval]`), a local multiple-choice task for offline use, and `earlytom compare` (answer agreement of
compressed settings with full tokens on a user's own videos). lmms-eval is imported only by
`earlytom.eval.lmms_model` and the launcher."""

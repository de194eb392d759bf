"""Model families behind one interface (backbone), their registry by model_type, presets and tokenizer."""

DEFAULT_MODEL = "llava-ov-7b"  # what tools that need a model's dims use when none is named (published config)

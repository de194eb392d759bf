"""build_engine: the engine directory and its backends."""

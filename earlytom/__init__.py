"""EarlyTom: visual-token compression inside the vision encoder of Video-LLMs, and the engines that run it."""

__version__ = "0.1.0"

"""An OpenAI-compatible video chat server for an EarlyTom pipeline (FastAPI + uvicorn, Prometheus metrics) and
its Ray Serve deployment. Needs the `[serve]` extra (and `[ray]` for replicas); nothing here is imported by the
rest of the package, and `earlytom.serve.cli` imports no server library until the command runs."""

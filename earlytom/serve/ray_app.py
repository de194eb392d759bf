"""The same app as a Ray Serve deployment: N replicas, each loading the pipeline and running `create_app`, behind
Ray's one HTTP proxy. Needs the `[ray]` extra; imported only for `earlytom serve --ray`."""

from ray import serve

from earlytom.serve.app import Settings, create_app
from earlytom.serve.model import ModelSpec


@serve.ingress()
class EarlyTomReplica:
    """One replica: its own pipeline, model thread, queue and /metrics (Prometheus scrapes each replica's)."""

    def __init__(self, spec: ModelSpec, settings: Settings, torch_threads: int) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        self.pipeline, self.settings = spec.load(), settings

    def __serve_build_asgi_app__(self):
        return create_app(self.pipeline, self.settings)


def application(spec: ModelSpec, settings: Settings, *, replicas: int, cpus_per_replica: float):
    """The bound Ray Serve application. Ray routes a request only to a replica with fewer than
    max_queue + 1 requests in flight, so its own queue is the app's --max-queue."""
    if replicas < 1:
        raise ValueError(f"--replicas = {replicas}: run at least 1 replica")
    if cpus_per_replica <= 0:
        raise ValueError(f"--cpus-per-replica = {cpus_per_replica}: give each replica a positive CPU share")
    deployment = serve.deployment(
        EarlyTomReplica,
        name="earlytom",
        num_replicas=replicas,
        max_ongoing_requests=settings.max_queue + 1,
        ray_actor_options={"num_cpus": cpus_per_replica},
    )
    return deployment.bind(spec, settings, max(1, int(cpus_per_replica)))


def run(spec: ModelSpec, settings: Settings, *, host: str, port: int, replicas: int, cpus_per_replica: float) -> None:
    """Start a local Ray instance (or join RAY_ADDRESS), deploy, and serve on host:port until interrupted."""
    import ray

    ray.init(include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    target = application(spec, settings, replicas=replicas, cpus_per_replica=cpus_per_replica)
    serve.run(target, name="earlytom", route_prefix="/", blocking=True)

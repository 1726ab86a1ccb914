"""The report's parts (faithfulness, localization, sanity) on a pool of Ray actors, each with its own copy of the
models and its own Explainer; ``cam.evaluate.report`` uses it when ``--workers`` is above 0."""

from __future__ import annotations

from collections.abc import Sequence

from cam.core.workers import limit_threads


class PartWorker:
    """A Ray actor of ``RayParts``: the models (from the object store) and an Explainer, built once."""

    def __init__(self, shared: list, methods: Sequence[str], threads: int):
        import ray

        limit_threads(threads)  # before the models arrive: unpacking them is TensorFlow's first work here
        from cam.core.catalog import Role
        from cam.explain.methods import Explainer
        from cam.explain.registry import selected

        self.models = ray.get(shared[0])
        gradcam, cam_model = self.models[Role.GRADCAM], self.models[Role.GAP]
        self.methods = selected(methods)
        self.explainer = Explainer(gradcam.model, gradcam.card["gradcam_layer"], cam_model.model)

    def run(self, kind: str, *job) -> dict | list:
        """One part of the report (``cam.evaluate.scoring.run_part``)."""
        from cam.evaluate.scoring import run_part

        return run_part(kind, self.explainer, self.models, self.methods, job)


class RayParts:
    """``cam.evaluate.scoring``'s parts (faithfulness, localization, sanity) on a pool of ``workers`` Ray actors (inside
    ``ray_session``), one GPU each where the cluster has GPUs: the models travel once through the object store, each
    actor builds its own Explainer, and the results come back in the jobs' order."""

    def __init__(self, models: dict, methods: Sequence[str], workers: int, threads: int = 1):
        import ray
        from ray.util import ActorPool

        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        actor = ray.remote(num_cpus=1, num_gpus=gpus)(PartWorker)
        shared = [ray.put(models)]  # in a list, so that each actor unpacks it after limiting its threads
        self.pool = ActorPool([actor.remote(shared, list(methods), threads) for _ in range(workers)])

    def __call__(self, kind: str, jobs: list[tuple]) -> list:
        return list(self.pool.map(lambda worker, job: worker.run.remote(kind, *job), jobs))

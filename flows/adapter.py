"""The Ray Data adapter: any stage of the registry as one ``map_batches`` step.

What a stage declares decides how it runs: ``pool="tasks"`` stages run as Ray tasks, each worker
process building the stage once and reusing it; ``pool="actors"`` stages run in an autoscaling actor
pool that loads the model once per actor. Resources come from the job config's ``resources``, and ``ray_options`` pass further
Ray arguments through (refused at config validation where they would collide with ours).
"""
from __future__ import annotations

from typing import Any, Callable

from corpusflow.actors import stage_class
from corpusflow.contracts.config import StageConfig
from corpusflow.contracts.registry import StageResources, StageSpec
from corpusflow.contracts.stage import Batch

# Stage instances of this worker process, for task stages: built on a task's first batch, reused after.
_INSTANCES: dict[tuple[str, str], Any] = {}


def ray_arguments(res: StageResources, restarts: int, actors: bool) -> dict[str, Any]:
    """``map_batches`` keyword arguments for one stage's reservation.

    Restarts and retries are bounded (Ray's actor-pool default is unlimited: a file that crashes its
    worker would reload the model and retry the same batch forever); ``ray_options`` may say otherwise.
    """
    bounds = {"max_restarts": restarts, "max_task_retries": restarts} if actors else {"max_retries": restarts}
    args: dict[str, Any] = {"num_cpus": res.num_cpus, "batch_size": res.batch_size, **bounds, **res.ray_options}
    if res.num_gpus:
        args["num_gpus"] = res.num_gpus
    if res.accelerator_type:
        args["accelerator_type"] = res.accelerator_type
    if res.memory_gb:
        args["memory"] = int(res.memory_gb * 2**30)
    return args


def _task(cls: type, config: StageConfig, args: tuple) -> Callable[[Batch], Batch]:
    """A plain function for Ray tasks that builds the stage once per worker process and reuses it."""
    key = (f"{cls.__module__}.{cls.__qualname__}", config.model_dump_json(), repr(args))

    def run(batch: Batch) -> Batch:
        if key not in _INSTANCES:
            _INSTANCES[key] = cls(config, *args)
        return _INSTANCES[key](batch)

    run.__name__ = cls.__name__  # what Ray names the operator in logs and progress bars
    return run


def add_stage(ds: Any, spec: StageSpec, config: StageConfig, cls: type | None = None, args: tuple = (),
              resources: StageResources | None = None, place: Callable[[], dict[str, Any]] | None = None) -> Any:
    """``ds`` followed by ``spec``'s stage, as the stage declares and the config reserves.

    ``cls`` runs another class in its place: a subclass of the registered stage (the benchmarks'
    fixed-length engines), or the job's own committer, built as ``cls(config, *args)``. ``resources``
    reserves for a stage outside the corpus job's ``resources`` (the index job's embedding stage).
    ``place`` gives each actor started its scheduling (flows/gpu_bundles.py: one per GPU bundle).
    """
    res = resources or config.resources.of(spec.name)
    ray_args = ray_arguments(res, config.faults.worker_restarts, actors=spec.pool == "actors")
    if place is not None:
        ray_args["ray_remote_args_fn"] = place
    if cls is None:
        if spec.cls is None:
            raise ValueError(f"stage {spec.name!r} has no stage class")
        cls = stage_class(spec.cls)
    if spec.pool == "actors":
        from ray.data import ActorPoolStrategy

        # The stage class itself is the actor: built once with the config, then called per batch.
        return ds.map_batches(cls, fn_constructor_args=(config, *args), batch_format="numpy",
                              compute=ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors), **ray_args)
    return ds.map_batches(_task(cls, config, args), batch_format="numpy", **ray_args)

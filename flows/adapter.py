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


# The Ray remote options Ray Data (2.60) takes as named parameters of ``map_batches``; any other option of
# ``ray_options`` still travels in its deprecated ``**ray_remote_args`` (see :func:`_map_batches`).
NAMED_RAY_OPTIONS = frozenset({"label_selector", "fallback_strategy", "max_calls", "resources", "accelerator_type",
                               "runtime_env"})


def ray_arguments(res: StageResources, restarts: int, actors: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """``map_batches`` keyword arguments for one stage's reservation: (named parameters, remote options
    Ray Data names no parameter for).

    Worker deaths are bounded by ``restarts`` (Ray Data's default is unlimited: a file that crashes its
    worker would reload the model and retry the same batch forever): a task is retried that often; an
    actor is restarted that often, and its calls wait while it restarts (``max_task_retries=-1``: a node
    lost under an actor costs the calls in flight nothing, yet an actor that keeps dying still ends, as
    its restarts run out). ``ray_options`` may say otherwise.
    """
    bounds = {"max_restarts": restarts, "max_task_retries": -1} if actors else {"max_retries": restarts}
    options = {**bounds, **res.ray_options}
    named: dict[str, Any] = {"num_cpus": res.num_cpus, "batch_size": res.batch_size,
                             **{k: v for k, v in options.items() if k in NAMED_RAY_OPTIONS}}
    if res.num_gpus:
        named["num_gpus"] = res.num_gpus
    if res.accelerator_type:
        named["accelerator_type"] = res.accelerator_type
    if res.memory_gb:
        named["memory"] = int(res.memory_gb * 2**30)
    return named, {k: v for k, v in options.items() if k not in NAMED_RAY_OPTIONS}


def _map_batches(ds: Any, fn: Any, named: dict[str, Any], remote: dict[str, Any]) -> Any:
    """``ds.map_batches`` with the remote options Ray Data has no named parameter for.

    Ray 2.60 deprecates ``**ray_remote_args`` for removal in 2.64 in favour of named parameters, but
    names none for the restart and retry bounds (``max_restarts``, ``max_task_retries``, ``max_retries``):
    its own actor-pool operator still reads them from there (``ActorPoolMapOperator._apply_default_remote_args``).
    Every option that has a name goes by name; the bounds stay where Ray reads them, and only that
    call's deprecation notice is silenced, so that any other use of the deprecated path still shows.
    """
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    with warnings.catch_warnings():
        if set(remote) <= _UNNAMED_BOUNDS:
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=RayDeprecationWarning)
        return ds.map_batches(fn, **named, **remote)


# Ray remote options that Ray Data 2.60 reads only from ``**ray_remote_args``.
_UNNAMED_BOUNDS = frozenset({"max_restarts", "max_task_retries", "max_retries"})


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
    named, remote = ray_arguments(res, config.faults.worker_restarts, actors=spec.pool == "actors")
    if place is not None:
        named["ray_remote_args_fn"] = place
    if cls is None:
        if spec.cls is None:
            raise ValueError(f"stage {spec.name!r} has no stage class")
        cls = stage_class(spec.cls)
    if spec.pool == "actors":
        from ray.data import ActorPoolStrategy

        # The stage class itself is the actor: built once with the config, then called per batch.
        return _map_batches(ds, cls, {"fn_constructor_args": (config, *args), "batch_format": "numpy",
                                      "compute": ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
                                      **named}, remote)
    return _map_batches(ds, _task(cls, config, args), {"batch_format": "numpy", **named}, remote)

"""The Ray executor of `bench sweep`: one Ray task per run with its CPU / GPU needs declared,
the fine-tuning tasks depending on their pretraining task; Ray retries a task whose worker
dies once. Ray is imported only here, when a sweep asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from benchmark.errors import ConfigError
from benchmark.processes import usable_cpus
from benchmark.runner import MetricRow, Prepared, failed_record
from benchmark.store import RunRecord
from benchmark.sweep_worker import pretrain_point, pretraining_groups, run_point, worker_env

if TYPE_CHECKING:
    from benchmark.sweep import SweepRequest

NO_RAY = "--executor ray needs Ray: pip install 'ray>=2.9'"


def _run_ray(
    req: SweepRequest,
    pending: list[Prepared],
    record: Callable[[Prepared, RunRecord, list[MetricRow]], None],
) -> None:
    try:
        import ray
    except ImportError:  # found by `plan`, yet broken
        raise ConfigError(NO_RAY) from None
    env = worker_env()
    started_here = not ray.is_initialized()
    if started_here:
        if req.ray_address:
            ray.init(address=req.ray_address, runtime_env={"env_vars": env}, log_to_driver=False)
        else:
            ray.init(
                num_cpus=usable_cpus(),
                include_dashboard=False,
                runtime_env={"env_vars": env},
                log_to_driver=False,
            )
    try:
        _submit_and_collect(ray, req, pending, record, env)
    finally:
        if started_here:
            ray.shutdown()


def _submit_and_collect(ray: Any, req: SweepRequest, pending, record, env) -> None:
    # `auto` is resolved by each worker on its node, so it is resolved against the cluster
    # here: a run that would find a GPU there must ask Ray for one, or it shares it unseen.
    cluster_gpus = req.device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1
    gpus = 1 if req.device.startswith("cuda") or cluster_gpus else 0
    opts = {"num_cpus": req.cpus_per_run, "num_gpus": gpus, "max_retries": 1}
    pretrain_task = ray.remote(pretrain_point).options(**opts)
    run_task = ray.remote(run_point).options(**opts)
    after: dict[str, Any] = {}
    for key, group in pretraining_groups(pending).items():
        after[key] = pretrain_task.remote(group[0].request, env, req.cpus_per_run, group[0].run_key)
    owner = {
        id(p): k for k, group in pretraining_groups(pending).items() for p in group
    }  # which pretraining each run waits for
    refs = {}
    for prep in pending:
        dep = after.get(owner.get(id(prep), ""))
        refs[run_task.remote(prep.request, env, req.cpus_per_run, dep, prep.run_key)] = prep
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        prep = refs.pop(ready[0])
        try:
            rec, rows = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            reason = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {reason[-1] if reason else ''}".strip()
            rec, rows = failed_record(prep, error, info={"executor": "ray"}), []
        record(prep, rec, rows)

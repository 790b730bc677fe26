"""Run any spokenlm recipe on Ray Train: a TorchTrainer with N CPU (or GPU) workers.

The recipe function runs unchanged in every worker; Ray Train initialises torch.distributed
(gloo on CPU), so the recipe's DDP wrapping, metric averaging and rank-0 checkpointing engage.
"""

from __future__ import annotations

import os
from typing import Any


def train_on_ray(stage: str, config: Any, *, num_workers: int, use_gpu: bool = False) -> dict:
    import ray

    from spokenlm.recipes import get_recipe

    _, train = get_recipe(stage)
    started = not ray.is_initialized()
    if started:
        # Workers each take one CPU; the driver needs none. Oversubscribe small machines on purpose.
        ray.init(num_cpus=max(num_workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=True)
    try:
        return _fit(train, config, stage, num_workers=num_workers, use_gpu=use_gpu)
    finally:
        if started:  # a Ray this call started ends with it: a caller that runs Serve next gets its own
            ray.shutdown()


def _fit(train, config: Any, stage: str, *, num_workers: int, use_gpu: bool) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(_: dict) -> None:
        import torch

        torch.set_num_threads(1)  # one thread per worker: N workers share the machine's cores
        summary = train(config)
        ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})

    trainer = TorchTrainer(
        loop,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"spokenlm-{stage}", storage_path=os.path.abspath(os.path.join(config.out_dir, "ray"))),
    )
    result = trainer.fit()
    return dict(result.metrics or {})

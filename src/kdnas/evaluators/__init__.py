"""Evaluators: what a search (or task=correlate) learns about candidate archs, ``evaluate(archs) -> results``.

* :mod:`.base`: the protocol and the disk cache in front of every evaluator (:class:`CachedEvaluator`);
* :mod:`.proxy`: :class:`ProxyEvaluator`, training-free scores on fixed batches;
* :mod:`.train`: :class:`TrainEvaluator`, a short training run per candidate.

Where the cache misses are computed (in-process, worker processes, submitit jobs) is :mod:`kdnas.execution`'s
business; its names are re-exported here for the callers that imported them from this module.
"""

from kdnas.evaluators.base import (
    COSTS,
    EVAL_FORMAT,
    RESULTS_VERSION,
    CachedEvaluator,
    Evaluator,
    memory_format,
    sample_archs,
)
from kdnas.evaluators.proxy import ProxyEvaluator, ProxySettings, embedding_width, proxy_batches, proxy_evaluator
from kdnas.evaluators.train import (
    CE_ONLY,
    TrainEvaluator,
    TrainSettings,
    per_epoch,
    teacher_logits_source,
    train_evaluator,
)
from kdnas.execution import (
    EXECUTORS,
    Pool,
    SlurmSettings,
    WorkerSpec,
    evaluate_in_worker,
    evaluation_pool,
    visible_gpus,
)
from kdnas.spaces.base import build_candidate

__all__ = ["CE_ONLY", "COSTS", "EVAL_FORMAT", "EXECUTORS", "RESULTS_VERSION", "CachedEvaluator", "Evaluator", "Pool",
           "ProxyEvaluator", "ProxySettings", "SlurmSettings", "TrainEvaluator", "TrainSettings", "WorkerSpec",
           "build_candidate",
           "embedding_width", "evaluate_in_worker", "evaluation_pool", "memory_format", "per_epoch", "proxy_batches",
           "proxy_evaluator", "sample_archs", "teacher_logits_source", "train_evaluator", "visible_gpus"]

"""Structured-config schemas registered in Hydra's ConfigStore, so that a wrong type or an unknown key fails at
composition with a message naming the key.

Invariants: the root schema types the foundation's groups; the groups typed ``Any`` here are typed per option by the
schemas their registries store (``schema/<group>/<name>``, :mod:`kdnas.registry`); this module imports no feature.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from kdnas.errors import ConfigError

T = TypeVar("T")
# conf/hydra: `hydra.searchpath: [file://conf]` adds ./conf (user experiments) when the working directory has one;
# Hydra warns about it on every run where it does not.
NO_USER_CONF_WARNING = r"provider=hydra\.searchpath in main, path=(file://)?conf is not available"


@dataclass
class DataConfig:
    name: str = "cifar10_mini"  # cifar10_mini | cifar10 | cifar100 | imagefolder
    root: str | None = None  # imagefolder: DIR with train/<class>/* and test/<class>/* (or a .tar.gz)
    download: bool = False  # torchvision data sets: fetch when missing
    image_size: int = 32  # 32 for CIFAR-style, 224 for ImageNet-style folders
    in_memory: bool | None = None  # None = auto (images <= 64 px are held as one uint8 tensor)
    val_fraction: float = 0.1  # mini-val share of the training set (AKD protocol); 0 = no split
    split_seed: int = 0  # the mini-train/mini-val split; independent of `seed`
    aug_seed: int | None = None  # augmentation schedule seed; None = follow `seed`
    augment: bool = True  # random crop (pad 4) + horizontal flip on the training split
    mean: list[float] | None = None  # None = per-data-set default
    std: list[float] | None = None
    num_workers: int = 2  # folder data only
    max_train_per_class: int | None = None  # subsample for smoke runs
    max_test_per_class: int | None = None


@dataclass
class ModelConfig:
    name: str = "resnet20"  # a registered zoo model or timm:<name>
    pretrained: bool = False  # timm/torchvision weights from a local cache (no hub offline)
    small_input_stem: bool = True  # timm models: adapt the stem to 32x32 inputs
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudentConfig:
    arch: str | None = None  # an arch JSON written by a search run; None = the `model` group's network


@dataclass
class TrainerConfig:
    epochs: int = 2
    train_split: str = "train"  # train (= mini-train when data.val_fraction > 0) | train_full
    batch_size: int = 64
    eval_batch_size: int = 256
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "multistep"  # multistep | cosine | constant
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "off"  # off | bf16 | fp16 (CUDA)
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = True
    sync_bn: bool = False  # data-parallel (torchrun) on CUDA: BatchNorm statistics over the global batch
    num_threads: int | None = None  # torch intra-op threads; None = leave as is (recorded)
    checkpoint_every: int = 1  # epochs
    eval_every: int = 1
    log_every: int = 50  # steps between NaN checks / progress updates
    max_steps_per_epoch: int | None = None  # cap for smoke runs


@dataclass
class TeacherConfig:
    kind: str = "store"  # store | checkpoint | ensemble | none
    model: str = "resnet20"
    checkpoint: str | None = None
    train_if_missing: bool = True
    retrain: bool = False  # task=train_teacher: train again even when the store has it
    seed: int = 0
    cache: str = "auto"  # teacher-output cache: auto | off | required
    members: list[Any] = field(default_factory=list)  # ensemble members (distillation issue)
    combine: str = "mean"  # ensemble: mean | oracle
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class LoggerConfig:
    kind: str = "jsonl"  # jsonl (always on) | wandb | none
    project: str = "kdnas"
    mode: str = "offline"  # wandb mode: offline | online | disabled
    tags: list[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    cache_dir: str = "${oc.env:KDNAS_CACHE_DIR,${oc.env:HOME}/.cache/kdnas}"
    data_dir: str = "${oc.env:KDNAS_DATA_DIR,${paths.cache_dir}/data}"


@dataclass
class KdnasConfig:
    task: str = "train"
    name: str = "run"
    seed: int = 0
    resume: str = "auto"  # auto | true | false | PATH of a run dir
    traceback: bool = False  # print full tracebacks for user errors
    progress: bool = True  # tqdm bars (quiet anyway when not a TTY)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # Typed per option by schema/<group>[/<name>] (kdnas.registry; stored by kdnas.api.register_schemas): distill,
    # space, strategy, constraint, evaluator.
    distill: Any = None
    space: Any = None
    strategy: Any = None
    evaluator: Any = None  # typed per option: schema/evaluator/<kind> (ProxyEvaluatorConfig, TrainEvaluatorConfig)
    constraint: Any = None
    search: Any = None
    export: Any = None
    correlate: Any = None
    cache: Any = None
    report: Any = None
    debug: Any = None
    experiment: Any = None
    run_dir: str | None = None  # set by the CLI / API; where this run writes


def register_configs() -> None:
    cs = ConfigStore.instance()
    # The root schema types every group it declares; option schemas live under schema/ (kdnas.registry), never as
    # choices of the group itself in Hydra's "available options" and `kdnas --help`.
    cs.store(name="kdnas_schema", node=KdnasConfig)
    for kind, schema in EVALUATOR_SCHEMAS.items():  # evaluator/<kind>.yaml starts from /schema/evaluator/<kind>@_here_
        cs.store(group="schema/evaluator", name=kind, node=schema)


__all__ = ["MISSING", "KdnasConfig", "DataConfig", "ModelConfig", "TrainerConfig", "TeacherConfig",
           "LoggerConfig", "PathsConfig", "SearchSettings", "ProxyEvaluatorConfig", "TrainEvaluatorConfig",
           "check_overrides", "register_configs", "dataclass_from_node", "to_object"]


def dataclass_from_node(schema: type[T], node: Any, key: str, hint: str = "") -> T:
    """A ``schema`` dataclass from a config node (DictConfig, mapping or None) of group ``key``; unknown keys
    raise one ConfigError naming them and the accepted ones (groups typed ``Any`` in the top-level schema)."""
    cfg = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    known = [f.name for f in fields(schema)]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ConfigError(f"Unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}{hint}; known: "
                          f"{', '.join(f'{key}.{k}' for k in sorted(known))}.")
    return schema(**cfg)


def to_object(node: Any, schema: type) -> Any:
    """A typed dataclass instance from a config node (validated by the structured schema, except keys added with
    ``+group.key=``: those raise :func:`dataclass_from_node`'s ConfigError naming them)."""
    if isinstance(node, schema):
        return node
    key = node._get_full_key(None) if isinstance(node, DictConfig) else ""  # "data", "teacher.trainer"; "" at a root
    return dataclass_from_node(schema, node, key or schema.__name__)


@dataclass
class SearchSettings:
    """The ``search:`` config group (read by the sample-based loop, kdnas.search, and by Cream's). What measures a
    candidate is the ``evaluator`` group."""

    budget: int = 64  # candidate evaluations
    batch: int = 8  # archs per ask/tell step
    top_k: int = 5  # archs listed in topk.json
    time_budget_s: float | None = None  # also stop asking once the search's wall-clock reaches this
    checkpoint_every_s: float = 30.0  # seconds between the loop's checkpoints (one at the end too); 0: every step
    executor: str = "local"  # train evaluator: local | processes | submitit_local | submitit_slurm
    workers: int = 1  # candidates evaluated at once (executor != local)
    slurm: dict[str, Any] = field(default_factory=dict)  # executor=submitit_slurm: kdnas.execution.SlurmSettings

    def __post_init__(self) -> None:
        if self.budget < 1 or self.batch < 1:
            raise ConfigError(f"search.budget={self.budget} and search.batch={self.batch} must be >= 1.")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"search.time_budget_s={self.time_budget_s} must be > 0 seconds, or null for no time "
                              "limit (search.budget alone ends the search).")
        if self.checkpoint_every_s < 0:
            raise ConfigError(f"search.checkpoint_every_s={self.checkpoint_every_s} must be >= 0 seconds (0: a "
                              "checkpoint after every step).")

    @classmethod
    def from_config(cls, node: Any) -> SearchSettings:
        keys = OmegaConf.to_container(node) if isinstance(node, DictConfig) else dict(node or {})
        spelled = []  # as overrides, so that an old key's message names its new spelling with the value
        for key, value in keys.items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            spelled += [f"search.{key}{'' if k is None else f'.{k}'}={v}" for k, v in items]
        check_overrides(spelled, where="in the composed config")
        return dataclass_from_node(cls, node, "search")


@dataclass
class ProxyEvaluatorConfig:
    """``evaluator=proxy``: candidates scored training-free on fixed batches (kdnas.evaluators.ProxySettings, whose
    ``name`` is ``proxy`` here)."""

    kind: str = "proxy"
    proxy: str = "diswot"  # the score the search maximises (a registered proxy: diswot, snip, synflow, naswot, ...)
    # DisWOT's semantic form, one per search: auto (official iff every arch has the teacher's width) | official
    # (per-class channel correlation) | class (K x K, any width)
    semantic: str = "auto"
    combine: str = "sum"  # diswot = semantic | relational | sum (the paper's fitness) | rank (mean rank-normalised)
    init: str = "default"  # default (the network's init) | normal (DisWOT's official N(0, 1) re-init)
    teacher_state: str = "random"  # random (DisWOT: a freshly initialised teacher) | trained (the stored teacher)
    batch_size: int = 64
    num_batches: int = 1  # scores averaged over this many fixed batches (the same for every candidate)
    split: str = "train"  # mini-train
    rank_reference: int = 32  # combine=rank: archs sampled once per search as the rank reference


def run_trainer() -> TrainerConfig:
    """A trainer node whose every key is the run's (``${trainer.<key>}``): a full, typed recipe that follows
    ``trainer=`` and its overrides unless a key of its own is set."""
    return TrainerConfig(**{f.name: f"${{trainer.{f.name}}}" for f in fields(TrainerConfig)})


@dataclass
class TrainEvaluatorConfig:
    """``evaluator=train``: every candidate trained briefly (kd from the teacher with ``distill=``, or ce);
    reward = mini-val top-1 (the AKD protocol)."""

    kind: str = "train"
    objective: str = "${oc.select:strategy.reward,kd}"  # kd | ce; follows strategy.reward where the strategy has one
    trainer: TrainerConfig = field(default_factory=run_trainer)  # the candidates' recipe; each key: the run's


EVALUATOR_SCHEMAS: dict[str, type] = {"proxy": ProxyEvaluatorConfig, "train": TrainEvaluatorConfig}

# Keys of kdnas before the ``evaluator`` group -> their new spelling (a trailing "." maps a whole subtree).
_LEGACY = {"proxy": "evaluator.proxy", "proxy.name": "evaluator.proxy", "proxy.": "evaluator.",
           "search.evaluator": "evaluator", "search.objective": "evaluator.objective",
           "search.trainer": "evaluator.trainer", "search.trainer.": "evaluator.trainer."}


def check_overrides(overrides: Sequence[str], where: str = "the command line") -> None:
    """Raise one ConfigError paragraph for an override spelled as before the ``evaluator`` group (``proxy=snip``,
    ``search.evaluator=train``, ``search.objective=ce``, ``+search.trainer.epochs=1``), naming the new spelling."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        new = _LEGACY.get(key) or next((n + key[len(o):] for o, n in _LEGACY.items()
                                        if o.endswith(".") and key.startswith(o)), None)
        if new is not None:
            # a deletion, or search.evaluator=null (the strategy's default): what no override now gives
            default = override.startswith("~") or (key == "search.evaluator" and value in ("null", "None"))
            fix = ("drop it (each strategy option selects its default evaluator)" if default else
                   f"write {new + sep + value!r}")
            raise ConfigError(
                f"{override!r} ({where}) is spelled as before kdnas's evaluator group: {fix}. "
                "What measures a candidate is now `evaluator=proxy` (evaluator.proxy=NAME, evaluator.combine=..., "
                "the default) or `evaluator=train` (evaluator.objective=kd|ce and the candidates' recipe, a full "
                "trainer node: evaluator.trainer.epochs=...; the default of strategy=akd, kdas and cream).")


def compose_defaults(overrides: Sequence[str]) -> dict[str, Any]:
    """The resolved config that ``overrides`` (group options only) compose to, without ``hydra``: inside a running
    Hydra app through its own config loader (the user's --config-dir and ./conf included)."""
    gh = GlobalHydra.instance()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NO_USER_CONF_WARNING)
        if gh.is_initialized() and gh.hydra is not None:
            cfg = gh.hydra.compose_config("config", list(overrides), run_mode=RunMode.RUN)
        else:
            with initialize_config_module(config_module="kdnas.conf", version_base="1.3"):
                cfg = hydra_compose(config_name="config", overrides=list(overrides))
    with read_write(cfg), open_dict(cfg):
        cfg.pop("hydra", None)
    try:
        out = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # a default that only resolves with a value the user gives
        out = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(out, dict)
    return out

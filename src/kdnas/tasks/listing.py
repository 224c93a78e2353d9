"""task=list and ``kdnas --help``: what this installation offers, as values the command line accepts (every config
group's options, and each registry's names: networks, loss terms, ...), and the stored teachers. Writes no run folder;
imports no torch for ``--help``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from kdnas.tasks import TASKS

if TYPE_CHECKING:  # not at run time: `kdnas --help` reads this module and stays free of torch
    from kdnas.context import RunContext

# One line per task for `kdnas --help` and task=list (a test keeps it in step with TASKS).
TASK_HELP = {
    "train": "plain cross-entropy training of any zoo or timm network",
    "train_teacher": "train a teacher and file it in the teacher store",
    "distill": "distill a student from a teacher (KD, feature losses, schemes; distill.compare_ce=true adds CE)",
    "search": "search a student architecture (DisWOT, zero-cost proxies, random, AKD, KDAS)",
    "cream_search": "deprecated alias of task=search strategy=cream (Cream of the Crop supernet search)",
    "pipeline": "search, then distill the winner with KD and train it with CE",
    "correlate": "how well proxies rank architectures against their trained accuracy",
    "cache": "list the cache (teacher logits, evals, teachers, data) with sizes and ages; cache.prune.* removes",
    "export": "export a trained network (weights, ONNX, params/MACs/latency)",
    "report": "Markdown + HTML report over a run, a search or a sweep",
    "list": "this listing: group options, networks, losses, stored teachers",
}
# Groups that are not options to pick: Hydra's own, and the option schemas (kdnas.registry).
_HIDDEN_GROUPS = ("hydra", "schema")


@contextmanager
def _config_loader() -> Iterator[Any]:
    """Hydra's config loader: the running app's, else one over kdnas's configs (./conf included)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield GlobalHydra.instance().config_loader()
        return
    with initialize_config_module(config_module="kdnas.conf", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def group_options() -> dict[str, list[str]]:
    """Every config group and the options ``group=option`` accepts (schemas left out)."""
    with _config_loader() as loader:
        groups = [g for g in loader.list_groups("") if g not in _HIDDEN_GROUPS]
        return {g: loader.get_group_options(g, config_name="config") for g in sorted(groups)}


def format_groups(indent: str = "  ", groups: dict[str, list[str]] | None = None) -> str:
    groups = group_options() if groups is None else groups
    return "\n".join(f"{indent}{group}: {', '.join(options)}" for group, options in groups.items())


def format_tasks(indent: str = "  ") -> str:
    return "\n".join(f"{indent}{name:<14} {TASK_HELP.get(name, '')}" for name in sorted(TASKS))


def _teacher_row(entry: dict[str, Any]) -> dict[str, Any]:
    recipe = entry.get("recipe") or {}
    identity = entry.get("data_identity") or {}
    data = {k: identity[k] for k in ("max_train_per_class", "val_fraction", "split_seed", "augment", "image_size")
            if identity.get(k) is not None}
    return {"model": entry.get("model"), "data": entry.get("data"), "data_settings": data, "seed": entry.get("seed"),
            "recipe": {k: recipe[k] for k in ("epochs", "train_split", "batch_size", "optimizer", "lr", "schedule",
                                              "weight_decay") if k in recipe},
            "test_top1": entry.get("test_top1"), "path": entry.get("path")}


def _format_teacher(t: dict[str, Any]) -> str:
    recipe = " ".join(f"{k}={v}" for k, v in t["recipe"].items()) or "?"
    data = " ".join(f"{k}={v}" for k, v in t["data_settings"].items())
    top1 = f"{t['test_top1']:.2f}" if isinstance(t["test_top1"], int | float) else "?"
    return (f"{t['model']:<14} data={t['data']} {data}\n      seed={t['seed']} recipe: {recipe}\n"
            f"      test top-1 {top1}  {t['path']}")


def registry_names() -> dict[str, tuple[str, list[str]]]:
    """Every registry that is not a config group of its own: kind -> (the key that takes a name, the names)."""
    from kdnas.data.datasets import BUILDERS
    from kdnas.distill.schemes import SCHEMES
    from kdnas.distill.terms import LOSS_TERMS
    from kdnas.models import MODELS
    from kdnas.proxies import PROXIES

    names = {r.kind: (r.key, r.names()) for r in (MODELS, LOSS_TERMS, SCHEMES, PROXIES, BUILDERS)}
    names["model"][1].append("timm:<name>")
    return names


def listing(cfg: DictConfig) -> dict[str, Any]:
    """Print what ``task=``, each group and each registry (``model.name=``, ``distill.weights.<term>=``, ...) accept,
    and the stored teachers; return it as a dict."""
    from pathlib import Path

    from kdnas.teachers import TeacherStore

    teachers = [_teacher_row(e) for e in TeacherStore(Path(str(cfg.paths.cache_dir)).expanduser()).entries()]
    registered = registry_names()
    out = {"tasks": sorted(TASKS), "groups": group_options(), "models": registered["model"][1],
           "losses": registered["loss term"][1], "registries": {k: v[1] for k, v in registered.items()},
           "teachers": teachers}
    print("tasks (task=NAME):")
    print(format_tasks())
    print("config groups (GROUP=OPTION):")
    print(format_groups(groups=out["groups"]))
    for kind, (key, names) in registered.items():
        print(f"{kind} names ({key}) ({len(names)}):")
        print("  " + ", ".join(names))
    print(f"stored teachers in {Path(str(cfg.paths.cache_dir)).expanduser() / 'teachers'} ({len(teachers)}):")
    for t in teachers:
        print("  " + _format_teacher(t))
    return out


def run(ctx: RunContext) -> dict[str, Any]:
    return listing(ctx.cfg)

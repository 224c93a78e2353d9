"""kdnas: knowledge-distillation-aware neural architecture search."""

__version__ = "0.1.0"


def run(task: str, overrides: list[str] | tuple[str, ...] = (), run_dir: str | None = None) -> dict:
    """Run a kdnas task from Python, e.g. ``kdnas.run("train", ["model.name=resnet8"])``."""
    from kdnas.api import run as _run

    return _run(task, overrides, run_dir)

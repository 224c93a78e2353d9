"""Regenerate the teacher that ships inside kdnas for `make run` (``experiment=quickstart``).

It is trained by kdnas's own recipe, the quickstart's ``teacher:`` group (network, ``teacher.trainer``, seed),
on the bundled data, in a scratch store, on CPU with one thread (``trainer.num_threads=1``: the only setting in
which CPU training is bit-reproducible across machines with different core counts), then stored in fp16
(halves the file; the top-1 of the fp16 copy is measured and recorded) under
``src/kdnas/assets/teachers/<store key>/`` with its card. The key is the teacher store's full key, so only a
configuration identical to the quickstart's (network, data identity, recipe, seed, store format) ever reads it.

Bit-identical: training twice gives the same sha256 (``--check`` trains twice and compares). A change of the
quickstart's teacher, the data pipeline or the store key changes the key: tests/test_quickstart.py then fails
until this script is rerun.

    python scripts/make_quickstart_teacher.py [--out DIR] [--work DIR] [--check] [--from-run DIR]

``--from-run DIR``: convert the teacher trained in an earlier ``task=train_teacher`` run folder of the same
configuration instead of training (its card is checked against the quickstart's key).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "kdnas" / "assets" / "teachers"
OVERRIDES = ["experiment=quickstart", "logger=none", "trainer.num_threads=1", "teacher.trainer.num_threads=1",
             "progress=false"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quickstart_key(work: Path) -> str:
    """The store key the quickstart asks for (computed as kdnas.teachers.ensure does)."""
    from kdnas.api import compose
    from kdnas.context import RunContext
    from kdnas.runs import RunDir
    from kdnas.teachers import teacher_key

    ctx = RunContext(compose("train_teacher", OVERRIDES), RunDir(work / "probe"))
    return teacher_key(ctx.workspace, ctx.cfg.teacher)


def train(work: Path) -> Path:
    """Train the quickstart teacher in a fresh scratch store (never the packaged one: teacher.retrain=true);
    return its run folder."""
    import kdnas

    os.environ["KDNAS_CACHE_DIR"] = str(work / "cache")
    run = work / "run"
    kdnas.run("train_teacher", [*OVERRIDES, "teacher.retrain=true"], run_dir=str(run))
    return run


def same_teacher(run: Path, ctx) -> None:
    """Refuse a run whose teacher or data config differs from the quickstart's (only runtime keys may differ)."""
    from omegaconf import OmegaConf

    from kdnas.config import TrainerConfig
    from kdnas.teachers import recipe_of

    theirs = OmegaConf.load(run / ".hydra" / "config.yaml")

    def what(cfg) -> tuple:
        t = cfg.teacher
        recipe = recipe_of(TrainerConfig(**OmegaConf.to_container(t.trainer, resolve=True)))
        return str(t.model), int(t.seed), recipe, OmegaConf.to_container(cfg.data, resolve=True)

    if what(theirs) != what(ctx.cfg):
        sys.exit(f"{run} trained another teacher or on other data than experiment=quickstart: {what(theirs)} vs "
                 f"{what(ctx.cfg)}")


def package(run: Path, key: str, out: Path, work: Path) -> Path:
    """fp16 weights + card under ``out/<key>``; the fp16 copy's test top-1 measured on the bundled test split."""
    import torch

    from kdnas.api import compose
    from kdnas.context import RunContext
    from kdnas.correlation import test_hits
    from kdnas.engine.checkpoint import load_weights, save_weights
    from kdnas.engine.trainer import write_model_card
    from kdnas.models import create_model
    from kdnas.runs import RunDir
    from kdnas.teachers import recipe_of, teacher_config, teacher_key

    ctx = RunContext(compose("train_teacher", OVERRIDES), RunDir(work / "probe"))
    tcfg = teacher_config(ctx.cfg.teacher)
    check_key, trainer_cfg = teacher_key(ctx.workspace, tcfg), tcfg.trainer
    if check_key != key:
        sys.exit(f"the quickstart's store key is {check_key}, expected {key}")
    same_teacher(run, ctx)
    card = json.loads((run / "summary.json").read_text())
    weights = {k: v.half() if v.is_floating_point() else v for k, v in load_weights(run / "model.safetensors").items()}
    for old in out.glob("*/teacher.json"):  # the quickstart teacher of an older key
        if json.loads(old.read_text()).get("made_by") == "scripts/make_quickstart_teacher.py":
            shutil.rmtree(old.parent)
    folder = out / key
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "model.safetensors", weights)
    net = create_model(tcfg.model, num_classes=ctx.data.num_classes)
    net.load_state_dict(weights)  # the fp16 values, as a run loading the file gets them
    net.eval()
    top1 = 100.0 * test_hits(ctx.data, net, ctx.workspace.trainer_config).double().mean().item()
    write_model_card(folder / "teacher.json", **{  # + weights_file and weights_sha256, verified on every load
        "key": key, "model": str(tcfg.model), "num_classes": ctx.data.num_classes,
        "data": str(ctx.cfg.data.name), "data_fingerprint": ctx.data.fingerprint, "data_identity": ctx.data.identity,
        "seed": int(tcfg.seed), "recipe": recipe_of(trainer_cfg), "dtype": "float16",
        "test_top1": round(top1, 2), "test_top1_fp32": card.get("test_top1"),
        "made_by": "scripts/make_quickstart_teacher.py",
        "regenerate": "python scripts/make_quickstart_teacher.py", "torch": torch.__version__.split("+")[0]})
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--check", action="store_true", help="train twice and require the same sha256")
    parser.add_argument("--from-run", type=Path, default=None, help="a finished train_teacher run of this config")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kdnas-quickstart-teacher-"))
    key = quickstart_key(work)
    print(f"quickstart teacher store key: {key}")
    run = args.from_run or train(work / "a")
    if args.from_run is not None and json.loads((run / "status.json").read_text()).get("status") != "ok":
        sys.exit(f"{run} is not a finished run")
    folder = package(run, key, args.out, work)
    digest = sha256(folder / "model.safetensors")
    print(f"{folder}: sha256 {digest}, {(folder / 'model.safetensors').stat().st_size / 1e6:.2f} MB, test top-1 "
          f"{json.loads((folder / 'teacher.json').read_text())['test_top1']}")
    if args.check:
        again = package(train(work / "b"), key, work / "b" / "out", work)
        other = sha256(again / "model.safetensors")
        print(f"second training: sha256 {other} ({'identical' if other == digest else 'DIFFERENT'})")
        if other != digest:
            sys.exit(1)


if __name__ == "__main__":
    main()

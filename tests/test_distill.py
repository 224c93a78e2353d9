"""The distillation library: terms from config and command line, connectors, one short distillation per loss
family, the teacher-logit cache, ensembles, task=distill end to end, and a teacher that never learns."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

import kdnas
from kdnas import teachers
from kdnas.api import compose
from kdnas.config import DataConfig, TrainerConfig
from kdnas.context import RunContext
from kdnas.data import build_data
from kdnas.distill.cache import TeacherLogitCache, prebuild
from kdnas.distill.connectors import ConvRegressor
from kdnas.distill.objective import DistillObjective
from kdnas.distill.terms import (
    DistillConfig,
    LossWeights,
    active_weights,
    distill_config,
    distill_identity,
    dkd_beta,
)
from kdnas.errors import ConfigError
from kdnas.models import create_model
from kdnas.runs import RunDir
from kdnas.teachers import Teacher, weights_sha256
from kdnas.utils import stable_hash

from .helpers import SMOKE

CONF = Path(__file__).resolve().parents[1] / "src" / "kdnas" / "conf"
PRESETS = sorted(p.stem for p in (CONF / "distill").glob("*.yaml"))
# 40 images (4 per class), no augmentation, two batches an epoch: the same views every epoch, so a term
# that is optimised must go down between the first and the last epoch.
OVERFIT = [*SMOKE, "model=resnet8", "teacher.model=resnet8", "data.max_train_per_class=4", "data.val_fraction=0",
           "data.augment=false", "trainer.batch_size=20", "trainer.schedule=constant",
           "trainer.eval_every=100", "trainer.checkpoint_every=100", "distill.dkd.warmup=1"]


@pytest.fixture(scope="module")
def data(kdnas_cache: Path):
    return build_data(DataConfig(max_train_per_class=20, max_test_per_class=10), kdnas_cache, kdnas_cache)


def teacher_net(name: str = "resnet8", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=10)


def objective(cfg: DistillConfig, data, teacher: Teacher, student: torch.nn.Module | None = None, **kw
              ) -> DistillObjective:
    student = student if student is not None else teacher_net("resnet8", 1)
    return DistillObjective(cfg, student, teacher, data=data, split="train", seed=0, student_name="resnet8", **kw)


# ------------------------------------------------------------------------------------------ config


def test_every_preset_composes_and_validates() -> None:
    for preset in PRESETS:
        cfg = distill_config(compose("distill", [f"distill={preset}"]).distill)
        assert active_weights(cfg), preset
    kd = distill_config(compose("distill", ["distill=kd"]).distill)
    assert active_weights(kd) == {"ce": 0.1, "kd": 0.9} and kd.temperature == 4.0


def test_terms_add_from_the_command_line() -> None:
    added = distill_config(compose("distill", ["distill=kd", "distill.weights.at=1000"]).distill)
    preset = distill_config(compose("distill", ["distill=kd_at"]).distill)
    assert active_weights(added) == active_weights(preset) == {"ce": 0.1, "kd": 0.9, "at": 1000.0}


def test_bad_distill_keys_fail_clearly() -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose("distill", ["distill.weights.kd=abc"])
    assert "kd" in str(info.value) + str(info.value.__cause__)
    with pytest.raises(ConfigCompositionException):
        compose("distill", ["distill.weights.not_a_loss=1"])
    # `+` slips an unknown key past Hydra; building the config names it.
    cfg = compose("distill", ["+distill.weights.not_a_loss=1"])
    with pytest.raises(ConfigError, match="not_a_loss"):
        distill_config(cfg.distill)
    with pytest.raises(ConfigError, match="negative"):
        distill_config(DistillConfig(weights=LossWeights(kd=-1.0)))


@pytest.mark.slow  # 3-5 s (make test-fast stays under 3 minutes)
def test_shipped_experiments_compose() -> None:
    for path in sorted((CONF / "experiment").glob("*_resnet*.yaml")):
        cfg = compose("distill", [f"experiment={path.stem}"])
        family, teacher, student = path.stem.rsplit("_", 2)
        assert set(family.split("_")) <= set(active_weights(distill_config(cfg.distill))), path.stem
        assert (cfg.teacher.model, cfg.model.name, cfg.data.name) == (teacher, student, "cifar100")
        assert cfg.trainer.epochs == cfg.teacher.trainer.epochs == 240


def test_dkd_beta_per_pair() -> None:
    assert dkd_beta("resnet56", "resnet20") == dkd_beta("resnet110", "resnet32") == 2.0
    assert dkd_beta("vgg13", "vgg8") == dkd_beta("wrn_40_2", "wrn_16_2") == 6.0
    assert dkd_beta("resnet32x4", "resnet8x4") == dkd_beta("wrn_40_2", "shufflenetv1") == 8.0


# -------------------------------------------------------------------------------------- connectors


def test_connectors_sized_from_a_probe(data) -> None:
    cfg = DistillConfig(weights=LossWeights(ce=1, fitnet=100, crd=0.8))
    obj = objective(cfg, data, Teacher([teacher_net("resnet8x4")], ["resnet8x4"]))
    conv = obj.terms["fitnet"].regressor.conv  # resnet8 stage2 [32, 16x16] -> resnet8x4 stage2 [128, 16x16]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (32, 128, (1, 1))
    crd = obj.terms["crd"].loss
    assert crd.embed_s.linear.in_features == 64 and crd.embed_t.linear.in_features == 256
    n = data.num_samples("train")
    assert crd.sampler.k == n - 1  # 16,384 negatives capped by the set size
    y = torch.arange(10)
    negatives = crd.sampler(y)
    assert not (data.labels["train"][negatives] == y[:, None]).any()  # always another class
    assert isinstance(ConvRegressor((2, 32, 16, 16), (2, 64, 8, 8)).conv, torch.nn.Conv2d)
    assert isinstance(ConvRegressor((2, 32, 8, 8), (2, 64, 16, 16)).conv, torch.nn.ConvTranspose2d)


def test_gradient_never_reaches_the_teacher(data) -> None:
    teacher = Teacher([teacher_net()], ["resnet8"])
    before = weights_sha256(teacher.members[0])
    cfg = DistillConfig(weights=LossWeights(ce=1, kd=1, fitnet=100, at=1000, rkd=1, crd=0.8))
    student = teacher_net("resnet8", 1)
    obj = objective(cfg, data, teacher, student)
    assert not any(name.startswith("teacher") for name in obj.state_dict())
    params = {id(p) for p in obj.parameters()}
    assert all(id(p) not in params and not p.requires_grad for p in teacher.parameters())
    opt = torch.optim.SGD([*student.parameters(), *obj.parameters()], lr=0.1)
    obj.train()
    for batch in data.loader("train", 16, train=True, seed=0, max_batches=3).epoch(0):
        opt.zero_grad()
        obj(student, batch, 0).loss.backward()
        opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training and weights_sha256(teacher.members[0]) == before  # BN statistics included


# ------------------------------------------------------------------------------ one run per family


@pytest.mark.parametrize("family", ["kd", "dkd", "fitnet", "at", "sp", "rkd", "pkt", "crd", "oracle", "diswot"])
def test_short_distillation_lowers_its_term(family: str, tmp_path: Path) -> None:
    # CRD's scores are normalised by a constant fixed on the first batch, against a random memory: its term
    # first rises while the memory fills with real embeddings, then falls. Compare it with its peak.
    epochs = 10 if family == "crd" else 6
    kdnas.run("distill", [*OVERFIT, f"distill={family}", f"trainer.epochs={epochs}"], run_dir=str(tmp_path))
    train = [r[f"loss_{family}"] for r in map(json.loads, (tmp_path / "metrics.jsonl").open()) if r["split"] == "train"]
    reference = max(train) if family == "crd" else train[0]
    assert train[-1] < reference, f"{family}: {train}"


# -------------------------------------------------------------------------------------------- cache


def test_cache_cold_then_warm_matches_the_online_teacher(data, tmp_path: Path) -> None:
    teacher = Teacher([teacher_net("resnet14")], ["resnet14"], cache="auto").to(memory_format=torch.channels_last)
    cache = TeacherLogitCache(tmp_path, data, "train", seed=0)
    net, h = teacher.members[0], teacher.hashes[0]
    for epoch in (0, 1):
        cold = cache.get(net, h, epoch)
        warm = cache.get(net, h, epoch)
        assert torch.equal(cold, warm) and warm.dtype == torch.float16
        # The trainer's views of this epoch (other batch size and order): same logits, bit for bit.
        for batch in data.loader("train", 16, train=True, seed=0, channels_last=True).epoch(epoch):
            assert torch.equal(teacher(batch.x).half(), warm[cache.rows[batch.index]])
    assert not torch.equal(cache.get(net, h, 0), cache.get(net, h, 1))  # augmented views differ per epoch
    assert len(list((tmp_path / "teacher_logits").glob("*.safetensors"))) == 2

    # A warm cache serves KD without running the teacher.
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    student = teacher_net("resnet8", 1)
    obj = objective(DistillConfig(weights=LossWeights(ce=0.1, kd=0.9)), data, teacher, student, cache_dir=tmp_path)
    obj.on_epoch_start(1)
    assert obj.cache is not None
    for batch in data.loader("train", 16, train=True, seed=0, max_batches=2).epoch(1):
        obj(student, batch, 1).loss.backward()
    assert not calls


def test_corrupt_or_stale_cache_is_rebuilt(data, tmp_path: Path) -> None:
    net = teacher_net()
    h = weights_sha256(net)
    cache = TeacherLogitCache(tmp_path, data, "train", seed=0)
    good = cache.get(net, h, 0)
    path = cache.path(cache.key(h, 0))
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF  # one byte of the logits
    path.write_bytes(bytes(blob))
    assert cache.load(path, cache.key(h, 0))[1].startswith("corrupt")
    assert torch.equal(cache.get(net, h, 0), good)
    path.write_bytes(bytes(blob[: len(blob) // 2]))  # truncated
    assert torch.equal(cache.get(net, h, 0), good)
    assert cache.load(path, cache.key(h, 0))[1] == ""
    other = cache.key(h, 0) | {"epoch": 7}
    assert cache.load(path, other)[1].startswith("stale")


def test_required_cache_fails_clearly_when_cold(data, tmp_path: Path) -> None:
    net = teacher_net()
    cache = TeacherLogitCache(tmp_path, data, "train", seed=0, mode="required")
    with pytest.raises(ConfigError, match="teacher.cache=required"):
        cache.get(net, weights_sha256(net), 0)
    prebuild(TeacherLogitCache(tmp_path, data, "train", seed=0), [net], [weights_sha256(net)], epochs=2)
    assert cache.get(net, weights_sha256(net), 1).shape == (data.num_samples("train"), 10)


# ------------------------------------------------------------------------------- ensemble and task


def member_logits(overrides: list[str], split: str, tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Each stored member's logits [M, N, K] on the un-augmented ``split`` and its labels [N], by hand."""
    ctx = RunContext(compose("distill", overrides), RunDir(tmp_path / "probe"))
    teacher = teachers.load(ctx.workspace, ctx.cfg.teacher)
    batches = list(ctx.data.loader(split, 10_000, train=False, seed=0).epoch(0))
    x, y = torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches])
    with torch.no_grad():
        return torch.stack([m.eval()(x) for m in teacher.members]), y


def test_teacher_api_reads_typed_settings_or_the_node(tmp_path: Path) -> None:
    """kdnas.teachers takes a Workspace and TeacherConfig (or the composed node: the same key); kind none and a
    wrongly typed key are one-paragraph ConfigErrors."""
    cfg = compose("distill", [*SMOKE, "teacher.model=resnet8"])
    ws = RunContext(cfg, RunDir(tmp_path / "run")).workspace
    typed = teachers.teacher_config(cfg.teacher)
    assert isinstance(typed.trainer, TrainerConfig) and typed.model == "resnet8"
    assert teachers.teacher_key(ws, typed) == teachers.teacher_key(ws, cfg.teacher)
    assert teachers.teacher_key(ws, replace(typed, seed=1)) != teachers.teacher_key(ws, typed)
    with pytest.raises(ConfigError, match="needs a teacher"):
        teachers.load(ws, replace(typed, kind="none"))
    with pytest.raises(ConfigError, match="teacher.seed"):
        teachers.teacher_config({"seed": "not a number"})


@pytest.mark.slow
def test_ensemble_mean_and_oracle(tmp_path: Path) -> None:
    members = "teacher.members=[{model:resnet8,seed:0},{model:resnet8,seed:1}]"
    base = [*OVERFIT, "teacher=ensemble", members, "trainer.epochs=2", "teacher.trainer.epochs=8"]
    mean = kdnas.run("distill", [*base, "distill=kd"], run_dir=str(tmp_path / "mean"))
    assert mean["teacher"] == ["resnet8", "resnet8"]
    logits, y = member_logits(base, "test", tmp_path)
    hand = 100.0 * (logits.mean(0).argmax(1) == y).float().mean().item()  # the mean-logit ensemble's top-1
    assert all((m.argmax(1) != logits.mean(0).argmax(1)).any() for m in logits)  # not one member's predictions
    assert mean["teacher_test_top1"] == pytest.approx(hand)
    kdnas.run("distill", [*base, "distill=oracle", "teacher.combine=oracle"], run_dir=str(tmp_path / "oracle"))
    train = [r for r in map(json.loads, (tmp_path / "oracle" / "metrics.jsonl").open()) if r["split"] == "train"]
    logits, y = member_logits(base, "train", tmp_path)
    some_wrong = (logits.argmax(2) != y).any(0).float().mean().item()  # no augmentation: the same views each epoch
    assert 0.0 < some_wrong < 1.0
    assert [r["loss_oracle_disagreement"] for r in train] == pytest.approx([some_wrong] * 2)
    assert all("loss_oracle" in r for r in train)
    with pytest.raises(ConfigError, match="distill=oracle"):
        kdnas.run("distill", [*base, "distill=kd", "teacher.combine=oracle"], run_dir=str(tmp_path / "bad"))


def test_task_distill_end_to_end_with_ce_comparison(tmp_path: Path) -> None:
    summary = kdnas.run("distill", [*SMOKE, "model=resnet8", "teacher.model=resnet14", "distill=kd",
                                    "distill.compare_ce=true", "trainer.max_steps_per_epoch=4"], run_dir=str(tmp_path))
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["test_top1_last"] == summary["test_top1_last"]
    for key in ("test_top1_best", "test_top1_last", "ce_test_top1_best", "ce_test_top1_last", "teacher_test_top1"):
        assert isinstance(written[key], float), key
    assert written["gain_test_top1_last"] == pytest.approx(written["test_top1_last"] - written["ce_test_top1_last"])
    assert written["student"] == "resnet8" and written["teacher"] == ["resnet14"]
    for run in (tmp_path, tmp_path / "ce"):
        assert (run / "model.safetensors").is_file()
        assert json.loads((run / "model.json").read_text())["model"] == "resnet8"


def test_task_distill_student_from_a_searched_arch(tmp_path: Path) -> None:
    from kdnas.api import execute
    from kdnas.spaces import create_space

    arch = create_space("resnet_cifar").make({"depth1": 1, "depth2": 1, "depth3": 1})
    (tmp_path / "best_arch.json").write_text(json.dumps(arch.to_json()))
    cfg = compose("distill", [*SMOKE, "teacher.model=resnet8", "distill=kd", "trainer.max_steps_per_epoch=2",
                              "distill.compare_ce=true", f"student.arch={tmp_path / 'best_arch.json'}"])
    summary = execute(cfg, tmp_path / "run", raise_errors=True)
    assert summary is not None and summary["student"] == f"arch:{arch.arch_id}"
    for run in (tmp_path / "run", tmp_path / "run" / "ce"):  # both folders export: each holds the arch
        assert json.loads((run / "arch.json").read_text()) == arch.to_json()
        card = json.loads((run / "model.json").read_text())
        assert card["model"] == f"arch:{arch.arch_id}" and card["arch"] == arch.to_json()


def test_paired_comparison_of_kd_and_ce_hits() -> None:
    from kdnas.correlation import comparison_line, paired_comparison

    kd = torch.tensor([1, 1, 1, 1, 0, 0, 1, 1, 0, 1], dtype=torch.bool)  # 7/10
    ce = torch.tensor([1, 1, 0, 1, 0, 1, 0, 1, 0, 0], dtype=torch.bool)  # 5/10; KD alone right on 3, CE alone on 1
    cmp = paired_comparison(kd, ce)
    d = torch.tensor([0, 0, 1, 0, 0, -1, 1, 0, 0, 1], dtype=torch.float64)
    assert cmp["a_top1"] == pytest.approx(70.0) and cmp["b_top1"] == pytest.approx(50.0)
    assert cmp["diff"] == pytest.approx(20.0) and cmp["se"] == pytest.approx(100 * d.std().item() / 10 ** 0.5)
    assert (cmp["a_only"], cmp["b_only"], cmp["n"]) == (3, 1, 10)
    assert "inside the noise" in comparison_line(cmp, "KD")  # z = 20 / 20 = 1
    big = paired_comparison(kd.repeat(50), ce.repeat(50))  # the same rates on 500 images: z = 7
    assert big["diff"] == pytest.approx(20.0) and "KD is better beyond the noise" in comparison_line(big, "KD")
    with pytest.raises(ValueError, match="equal-length"):
        paired_comparison(kd, ce[:5])


def test_candidate_cache_key_names_the_teacher_logit_source() -> None:
    """A candidate distilled from fp16 cached logits differs from one distilled from the fp32 teacher run online:
    the train evaluator's identity says which one it used (cache auto and required: the same logits)."""
    from kdnas.evaluators import teacher_logits_source

    kd, kd_at = distill_config({"weights": {"ce": 1.0, "kd": 1.0}}), distill_config({"weights": {"kd": 1.0, "at": 1.0}})
    source = {mode: teacher_logits_source(Teacher([teacher_net()], ["resnet8"], cache=mode), kd)
              for mode in ("off", "auto", "required")}
    assert source == {"off": "online_fp32", "auto": "cached_fp16", "required": "cached_fp16"}
    assert teacher_logits_source(Teacher([teacher_net()], ["resnet8"], cache="auto"), kd_at) == "online_fp32"
    assert teacher_logits_source(None, kd) is None


@pytest.mark.parametrize(("preset", "before"), [("kd", "9e0ac844ac2ec66b"), ("dkd", "d0c08f55d35c1cf7"),
                                                ("crd", "e1aba29e840edfc7"), ("born_again", "10a7c7ecef12b2c5")])
def test_distill_identity_keeps_the_cache_keys_of_before_the_scheme_split(preset: str, before: str) -> None:
    """The train evaluator's caches key the distill settings by ``distill_identity``: the hashes recorded at c8237b2
    (the schemes' parameters in one ``schemes`` node), so an upgrade reuses candidates trained then."""
    cfg = distill_config(compose("distill", [f"distill={preset}"]).distill)
    assert stable_hash(distill_identity(cfg)) == before


def test_distill_identity_holds_every_scheme_parameter() -> None:
    """A scheme's parameter still changes the identity (it moved, it was not dropped)."""
    base = distill_config(compose("distill", ["distill=born_again"]).distill)
    changed = distill_config(compose("distill", ["distill=born_again", "distill.born_again.generations=2"]).distill)
    assert stable_hash(distill_identity(base)) != stable_hash(distill_identity(changed))

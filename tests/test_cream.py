"""Cream of the Crop: uniform path sampling, board admission, meta matching, the look-ahead hypergradient, BN
recalibration, and an end-to-end search on smoke data that resumes to the uninterrupted result."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

import kdnas
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint, pack, unpack
from kdnas.spaces import load_arch
from kdnas.spaces.costs import CostModel
from kdnas.spaces.mbconv import CreamSpace
from kdnas.strategies.cream import (
    BoardEntry,
    CreamSearch,
    CreamStrategy,
    MacsTable,
    MetaMatching,
    PrioritizedBoard,
    Supernet,
    cream_loss,
    lookahead_hypergradient,
    recalibrate_bn,
)
from kdnas.strategies.cream.search import CreamConfig, meta_update_due, warmup_epochs

from .helpers import SMOKE

torch.set_num_threads(1)
SPACE = CreamSpace([1, 1, 1, 1, 1])


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    torch.manual_seed(0)
    return Supernet(SPACE, num_classes=10)


def test_sampling_is_uniform() -> None:
    strategy = CreamStrategy(SPACE, seed=0)
    paths = strategy.ask(3000)
    for d in SPACE.decisions():
        counts = Counter(p.decisions[d.name] for p in paths)
        assert stats.chisquare([counts[c] for c in d.options]).pvalue > 1e-3, (d.name, counts)
    pairs = Counter((p.decisions["s1_l1"], p.decisions["s5_l1"]) for p in paths)  # independent layers
    assert stats.chisquare([pairs[(a, b)] for a in SPACE.decisions()[0].options
                            for b in SPACE.decisions()[0].options]).pvalue > 1e-3


def entry(path_seed: int | None, score: float, flops: int, step: int = 0) -> BoardEntry:
    path = None if path_seed is None else SPACE.sample(random.Random(path_seed))
    return BoardEntry(path, score, flops, torch.zeros(1, 3, 2, 2), torch.full((1, 10), 0.1), step)


def test_board_admission_rules() -> None:
    board = PrioritizedBoard(size=2, gap=5.0, flops_max=100)
    assert not board.offer(entry(1, 99.0, 101))  # over the FLOPs gate, even on an empty board
    assert board.offer(entry(1, 60.0, 50)) and board.offer(entry(2, 80.0, 50))  # not full
    assert [e.score for e in board.entries] == [80.0, 60.0]
    assert not board.offer(entry(3, 64.0, 60))  # beats the worst by < gap, with more FLOPs
    assert not board.offer(entry(3, 60.0, 40))  # fewer FLOPs but not better
    assert board.offer(entry(3, 61.0, 40))  # better and cheaper than the worst
    assert [e.score for e in board.entries] == [80.0, 61.0]
    assert board.offer(entry(4, 66.5, 90))  # beats the worst (61) by more than the gap
    assert [e.score for e in board.entries] == [80.0, 66.5] and len(board) == 2
    assert board.offer(entry(4, 50.0, 90, step=9))  # a path on the board is re-measured, not listed twice
    assert [(e.score, e.step) for e in board.entries] == [(80.0, 0), (50.0, 9)]
    tie = PrioritizedBoard(size=3)
    for seed, flops in ((5, 30), (6, 10), (7, 20)):
        tie.offer(entry(seed, 70.0, flops))
    assert [e.flops for e in tie.entries] == [10, 20, 30]  # equal scores: fewer FLOPs first


def test_strategy_state_round_trip() -> None:
    strategy = CreamStrategy(SPACE, seed=3, board_size=2)
    strategy.tell(strategy.ask(2), [{"reward": r, "flops": 10, "images": torch.rand(1, 3, 2, 2),
                                     "probs": torch.rand(1, 10), "step": r} for r in (1, 2)])
    tensors, skeleton = pack(strategy.state_dict())
    again = CreamStrategy(SPACE, seed=3, board_size=2)
    again.load_state_dict(unpack(json.loads(json.dumps(skeleton)), tensors))
    assert [e.summary() for e in again.board.entries] == [e.summary() for e in strategy.board.entries]
    assert torch.equal(again.board.entries[0].images, strategy.board.entries[0].images)
    assert again.ask(3) == strategy.ask(3)


def test_meta_matching_uses_the_chosen_entry() -> None:
    meta = MetaMatching(num_classes=2, slice_size=1)
    with torch.no_grad():
        meta.layer.weight.copy_(torch.tensor([[4.0, 0.0]]))
        meta.layer.bias.zero_()
    current = torch.tensor([[[0.5, 0.5]]]).expand(3, 1, 2)
    stored = torch.tensor([[[0.4, 0.6]], [[0.2, 0.8]], [[0.6, 0.4]]])  # scores 0.4, 1.2, -0.4
    index, rho = meta.select(current, stored)
    assert index == 1  # the highest score, not the last entry
    assert rho.item() == pytest.approx(torch.sigmoid(torch.tensor(1.2)).item())  # its own score, sign +
    rho.backward()
    assert meta.layer.weight.grad is not None  # rho is differentiable in the matching network


def test_hypergradient_matches_finite_differences() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    meta = MetaMatching(num_classes=3, slice_size=2).double()
    x_tr, x_val = torch.randn(2, 5, dtype=torch.double), torch.randn(2, 5, dtype=torch.double)
    y_tr, y_val = torch.tensor([0, 2]), torch.tensor([1, 2])
    teacher = torch.randn(2, 3, dtype=torch.double)
    diffs = torch.randn(3, 2, 3, dtype=torch.double)  # 3 board entries
    lr = 0.7
    params = dict(model.named_parameters())

    def val_loss_after_step() -> torch.Tensor:
        _, rho = meta.select(diffs, torch.zeros_like(diffs))
        grads = torch.autograd.grad(cream_loss(model(x_tr), teacher, y_tr, rho), list(params.values()))
        ahead = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
        return F.cross_entropy(torch.func.functional_call(model, ahead, (x_val,)), y_val)

    def inner(f):
        return cream_loss(f(x_tr), teacher, y_tr, meta.select(diffs, torch.zeros_like(diffs))[1])

    hyper = lookahead_hypergradient(model, params, inner, lambda f: F.cross_entropy(f(x_val), y_val), lr,
                                    list(meta.parameters()))
    eps = 1e-6
    for p, g in zip(meta.parameters(), hyper):
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
            up = val_loss_after_step().item()
            with torch.no_grad():
                p.view(-1)[i] -= 2 * eps
            down = val_loss_after_step().item()
            with torch.no_grad():
                p.view(-1)[i] += eps
            fd.view(-1)[i] = (up - down) / (2 * eps)
        assert torch.allclose(g, fd, rtol=1e-5, atol=1e-9), (g, fd)
    assert hyper[0].abs().sum() > 0


def test_extracted_path_is_the_space_network(supernet: Supernet) -> None:
    path = SPACE.sample(random.Random(1))
    net = supernet.extract(path)
    x = torch.randn(2, 3, 32, 32)
    supernet.eval()
    assert torch.allclose(supernet(x, path), net.eval()(x), atol=1e-5)
    assert type(net) is type(SPACE.build(path, 10))
    assert MacsTable(supernet)(path) == CostModel(SPACE, 10, 32)(path, ("macs",))["macs"]
    assert set(supernet.path_parameters(path)) >= {n for n in dict(supernet.named_parameters()) if "blocks" not in n}


def test_bn_recalibration_sets_the_path_statistics(supernet: Supernet) -> None:
    path = SPACE.sample(random.Random(2))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    net = supernet.extract(path)
    torch.manual_seed(1)
    batches = [torch.randn(8, 3, 32, 32) * 2 + 1 for _ in range(3)]
    stem_bn = net.stem[1]
    with torch.no_grad():
        pre_bn = [net.stem[0](x) for x in batches]  # the conv feeding the stem BN
    recalibrate_bn(net, batches)
    assert not net.training and stem_bn.momentum == 0.1 and int(stem_bn.num_batches_tracked) == 3
    assert torch.allclose(stem_bn.running_mean, torch.stack([h.mean((0, 2, 3)) for h in pre_bn]).mean(0), atol=1e-5)
    assert torch.allclose(stem_bn.running_var, torch.stack([h.var((0, 2, 3)) for h in pre_bn]).mean(0), rtol=1e-4)
    inherited = supernet.path_state_dict(path)
    deep = [k for k in inherited if k.startswith("blocks.3.") and k.endswith("running_var")][0]
    assert not torch.allclose(net.state_dict()[deep], inherited[deep])  # the path's statistics now
    assert all(torch.equal(v, supernet.state_dict()[k]) for k, v in before.items())  # supernet untouched


# the supernet recipe is the train evaluator's `evaluator.trainer` (in task=search as in task=pipeline)
CREAM = ["space=mbconv_cream", "space.layers=[1,1,1,1,1]", "strategy=cream", "evaluator.trainer.epochs=3",
         "trainer.max_steps_per_epoch=4", "strategy.warmup_epochs=1", "strategy.meta_every=3",
         "strategy.board_size=3", "strategy.bn_batches=1", "strategy.admission=minival",
         "strategy.external_teacher=true", "teacher.model=resnet8", "strategy.flops_bounds=[5e7]"]


@pytest.mark.slow
def test_search_end_to_end_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """task=search strategy=cream runs; the deprecated task=cream_search alias, killed and resumed, gives the very
    same search (its own run folder: the task name is part of the config hash)."""
    overrides = [*SMOKE, *CREAM]
    whole = kdnas.run("search", overrides, run_dir=tmp_path / "whole")
    for name in ("history.jsonl", "board.json", "best_arch.json", "board_accuracy.png", "summary.json"):
        assert (tmp_path / "whole" / name).is_file(), name
    board = json.loads((tmp_path / "whole" / "board.json").read_text())
    assert board["mentor"] is not None and len(board["entries"]) == whole["board_size"] > 0
    assert [b["flops_max"] for b in board["best_under_flops"]] == [5e7, None]
    best = load_arch(tmp_path / "whole" / "best_arch.json")
    assert best.arch_id == whole["best_arch_id"] == board["best_under_flops"][-1]["arch_id"]
    history = [json.loads(line) for line in (tmp_path / "whole" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1, 2] and history[0]["warmup"] and not history[1]["warmup"]
    assert sum(r["meta_updates"] for r in history) > 0 and history[2]["distilled_steps"] == 4

    original_save = CreamSearch.save

    def killed_after_second_epoch(self: CreamSearch, epoch: int) -> None:
        original_save(self, epoch)
        if epoch == 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(CreamSearch, "save", killed_after_second_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        kdnas.run("cream_search", overrides, run_dir=tmp_path / "resumed")
    monkeypatch.setattr(CreamSearch, "save", original_save)
    with caplog.at_level(logging.WARNING, logger="kdnas"):
        resumed = kdnas.run("cream_search", overrides, run_dir=tmp_path / "resumed")
    assert "task=cream_search is deprecated: run task=search strategy=cream" in caplog.text

    assert resumed["best_arch_id"] == whole["best_arch_id"]
    assert (json.loads((tmp_path / "resumed" / "board.json").read_text()) == board)
    weights = [load_checkpoint(latest_checkpoint(tmp_path / run / "checkpoints")) for run in ("whole", "resumed")]
    for key, value in weights[0][0].items():
        assert torch.equal(value, weights[1][0][key]), key
    assert torch.equal(weights[0][1]["meta"]["layer.weight"], weights[1][1]["meta"]["layer.weight"])
    again = [json.loads(line) for line in (tmp_path / "resumed" / "history.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_warmup_and_meta_updates_follow_the_official_schedule() -> None:
    """Official train.py trains with CE alone while ``epoch <= META_STA_EPOCH`` (20 of 120 epochs, 0-based), and
    MetaMatchingNetwork.isUpdate updates when ``epoch > META_STA_EPOCH and batch_idx > 0 and batch_idx %
    UPDATE_ITER == 0``."""
    assert warmup_epochs(CreamConfig(), 120) == len([e for e in range(120) if e <= 20]) == 21
    assert warmup_epochs(CreamConfig(warmup_epochs=3), 120) == 3
    n, warm, every = 450, 2, 200  # epochs longer than UPDATE_ITER: the official steps exactly
    official = [(e, b) for e in range(5) for b in range(n) if e >= warm and b > 0 and b % every == 0]
    ours = [(e, b) for e in range(warm, 5) for b in range(n) if meta_update_due(b, n, e - warm, every)]
    assert ours == official
    n = 156  # shorter epochs (the bundled data at batch 64): counted from the end of the warm-up
    ours = [(e - warm) * n + b for e in range(warm, 5) for b in range(n) if meta_update_due(b, n, e - warm, every)]
    assert ours == [200, 400]

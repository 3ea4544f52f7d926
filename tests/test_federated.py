"""Federated DST (sparseprior.federated): splits, wire format, aggregation, strategies, engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparseprior.engine import TrainConfig
from sparseprior.federated import (
    STRATEGIES,
    ClientUpdate,
    Federation,
    FedRunConfig,
    check_update,
    decode,
    encode,
    load_final,
    make_split,
    momentum_step,
    parse_split,
    prune_to_budgets,
    readjust_masks,
    run_federated,
    weighted_average,
)
from sparseprior.federated.client import MaskReadjust
from sparseprior.federated.comm import mask_encoding
from sparseprior.federated.faults import CORRUPTIONS
from sparseprior.federated.server import union_masks
from sparseprior.federated.splits import ClientSplit


def tiny(**kw) -> FedRunConfig:
    """A seconds-long federation: an MLP on 8x8 synthetic blobs, 6 clients, 3 per round."""
    base = dict(
        model="mlp", model_options={"hidden": [24]}, dataset="synthetic",
        dataset_options={"n_train": 360, "n_test": 120, "image_shape": [1, 8, 8],
                         "class_sep": 1.5},
        strategy="feddst", clients=6, per_round=3, rounds=6, split="shards:2",
        sparsity=0.8, alpha=0.3, readjust_every=2, readjust_end=1.0, eval_every=3,
        client_test=False,
        local=TrainConfig(epochs=2, batch_size=20, lr=0.05, momentum=0.9, weight_decay=0.0,
                          eval_every=0, log_every=0, progress=False, device="cpu"),
        threads=1)
    base.update(kw)
    return FedRunConfig(**base)


# ------------------------------------------------------------------ splits


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3", "shards:2"])
def test_splits_partition_the_data_and_are_seeded(spec, tmp_path):
    labels = np.repeat(np.arange(10), 60)
    test_labels = np.repeat(np.arange(10), 20)
    split = make_split(spec, labels, test_labels, clients=10, seed=3)
    allidx = np.concatenate(split.train)
    assert sorted(allidx.tolist()) == list(range(600))  # disjoint and complete
    again = make_split(spec, labels, test_labels, clients=10, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(split.train, again.train, strict=True))
    other = make_split(spec, labels, test_labels, clients=10, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(split.train, other.train, strict=True))
    split.save(tmp_path / "split.json")
    loaded = ClientSplit.load(tmp_path / "split.json")
    assert all(np.array_equal(a, b) for a, b in zip(split.train, loaded.train, strict=True))
    # per-client test splits follow the client's label distribution
    for train, test in zip(split.train, split.test, strict=True):
        assert set(test_labels[test].tolist()) <= set(labels[train].tolist())


def test_pathological_shards_give_k_labels_per_client():
    labels = np.repeat(np.arange(10), 60)
    split = make_split("shards:2", labels, labels, clients=10, seed=0)
    assert all(len(set(labels[p].tolist())) <= 2 for p in split.train)
    assert all(len(p) == 60 for p in split.train)


def test_dirichlet_skew_grows_as_beta_shrinks():
    labels = np.repeat(np.arange(10), 200)

    def mean_labels(beta):
        split = make_split(f"dirichlet:{beta}", labels, labels, clients=10, seed=0)
        return np.mean([len(np.unique(labels[p])) for p in split.train])

    assert mean_labels(0.1) < mean_labels(100.0)


@pytest.mark.parametrize("spec, match", [("dirichlet:0", "beta must be > 0"),
                                         ("dirichlet:-1", "beta must be > 0"),
                                         ("shards:1.5", "integer"), ("zipf:2", "unknown split"),
                                         ("iid:3", "no parameter")])
def test_bad_split_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_split(spec)


def test_impossible_settings_are_clear_errors():
    labels = np.repeat(np.arange(10), 61)
    with pytest.raises(ValueError, match="do not divide"):
        make_split("shards:2", labels, labels, clients=10, seed=0)
    with pytest.raises(ValueError, match="more clients per round than there are clients"):
        tiny(per_round=7)
    with pytest.raises(ValueError, match="min_clients"):
        tiny(min_clients=4)
    with pytest.raises(ValueError, match="unknown federated strategy"):
        tiny(strategy="fedprox")
    with pytest.raises(ValueError, match="readjust_epoch"):
        tiny(readjust_epoch=3)


# ------------------------------------------------------------------ wire format


def test_encode_decode_round_trip_and_counted_bytes():
    torch.manual_seed(0)
    w = {"a.weight": torch.randn(40, 30), "a.bias": torch.randn(40),
         "b.weight": torch.randn(1000, 100)}
    masks = {"a.weight": torch.rand(40, 30) < 0.5, "b.weight": torch.rand(1000, 100) < 0.01}
    w = {n: t * masks[n] if n in masks else t for n, t in w.items()}
    blob = encode(w, masks, meta={"num_samples": 7})
    got, got_masks, meta = decode(blob)
    assert meta == {"num_samples": 7}
    assert all(torch.equal(got[n], w[n]) for n in w)
    assert all(torch.equal(got_masks[n], masks[n]) for n in masks)
    # a dense 1200-weight layer at 50%: bitmap (150 B) beats uint16 indices (~1200 B);
    # a 100k layer at 1%: uint32 indices (~4 kB) beat the bitmap (12.5 kB)
    assert mask_encoding(masks["a.weight"]) == "bitmap"
    assert mask_encoding(masks["b.weight"]) == "indices"
    # the payload (values + masks) is what the bytes hold, plus one bounded header
    payload = 4 * (int(masks["a.weight"].sum()) + 40 + int(masks["b.weight"].sum())) \
        + math.ceil(1200 / 8) + 4 * int(masks["b.weight"].sum())
    assert payload < len(blob) < payload + 1024
    # known masks are not sent; fp16 halves the values
    known = encode(w, masks, known_masks=masks)
    assert len(known) < len(blob) - 150
    n_values = int(masks["a.weight"].sum()) + 40 + int(masks["b.weight"].sum())
    half = encode(w, masks, value_dtype="fp16", meta={"num_samples": 7})
    assert abs((len(blob) - len(half)) - 2 * n_values) < 64


def test_decode_rejects_malformed_messages():
    from sparseprior.federated.comm import DecodeError

    with pytest.raises(DecodeError):
        decode(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(DecodeError, match="unknown_mask"):
        decode(encode({"w": torch.zeros(4)}, {"w": torch.ones(4, dtype=torch.bool)},
                      known_masks={"w": torch.ones(4, dtype=torch.bool)}))


# ------------------------------------------------------------------ aggregation


def _upd(client, n, weights, masks=None):
    return ClientUpdate(client, n, weights, masks)


def test_sparse_aggregation_matches_a_hand_computed_3_client_example():
    m = lambda *bits: torch.tensor(bits, dtype=torch.bool)  # noqa: E731
    t = lambda *vals: torch.tensor(vals, dtype=torch.float32)  # noqa: E731
    template = {"w": torch.zeros(4), "b": torch.zeros(1)}
    ups = [_upd(0, 1, {"w": t(1, 2, 0, 0), "b": t(1)}, {"w": m(1, 1, 0, 0)}),
           _upd(1, 2, {"w": t(3, 0, 4, 0), "b": t(2)}, {"w": m(1, 0, 1, 0)}),
           _upd(2, 3, {"w": t(0, -6, 0, 0.5), "b": t(4)}, {"w": m(0, 1, 0, 1)})]
    avg = weighted_average(ups, template)
    # w0: (1*1 + 2*3) / (1 + 2) = 7/3; w1: (1*2 + 3*-6) / (1 + 3) = -4; w2: 4; w3: 0.5
    assert torch.allclose(avg["w"], t(7 / 3, -4, 4, 0.5))
    # b (dense): (1*1 + 2*2 + 3*4) / 6 = 17/6
    assert torch.allclose(avg["b"], t(17 / 6))
    union = union_masks(ups)
    assert torch.equal(union["w"], m(1, 1, 1, 1))
    new = prune_to_budgets(avg, union, {"w": 2})  # keep the 2 largest |w|: -4 and 4
    assert torch.equal(new["w"], m(0, 1, 1, 0))


def test_fedavgm_momentum_step_by_hand():
    w = {"w": torch.tensor([1.0, 2.0])}
    avg = {"w": torch.tensor([0.5, 2.5])}
    new, v = momentum_step(w, avg, None, lr=1.0, momentum=0.9)
    assert torch.allclose(new["w"], avg["w"]) and torch.allclose(v["w"], torch.tensor([.5, -.5]))
    new2, v2 = momentum_step(new, {"w": torch.tensor([0.0, 3.0])}, v, lr=0.5, momentum=0.9)
    # v = 0.9 * [.5, -.5] + ([.5, 2.5] - [0, 3]) = [0.95, -0.95]; w = [.5, 2.5] - 0.5 v
    assert torch.allclose(v2["w"], torch.tensor([0.95, -0.95]))
    assert torch.allclose(new2["w"], torch.tensor([0.025, 2.975]))


def test_readjust_keeps_counts_never_regrows_active_and_grown_start_at_zero():
    torch.manual_seed(0)
    w = torch.randn(20, 10)
    mask = torch.rand(20, 10) < 0.3
    w = w * mask
    grads = torch.randn(20, 10) * 10  # large gradients everywhere, also on active weights
    new = readjust_masks({"w": w}, {"w": mask}, {"w": grads}, 0.25)["w"]
    assert int(new.sum()) == int(mask.sum())
    dropped, grown = mask & ~new, ~mask & new
    assert int(dropped.sum()) == int(grown.sum()) == round(0.25 * int(mask.sum()))
    # dropped are the smallest active |w|; grown the largest inactive |grad|
    assert w.abs()[dropped].max() <= w.abs()[mask & new].min()
    assert grads.abs()[grown].min() >= grads.abs()[~mask & ~new].max()


def test_feddst_alpha_is_cosine_decayed_once_and_only_on_readjust_rounds():
    strategy = STRATEGIES.get("feddst")(tiny(rounds=10, readjust_every=2, readjust_end=0.8,
                                            alpha=0.4))
    fractions = [strategy.readjust_fraction(r) for r in range(10)]
    expected = [0.0 if (r + 1) % 2 or r >= 8 else 0.2 * (1 + math.cos(math.pi * r / 8))
                for r in range(10)]
    assert fractions == pytest.approx(expected)
    assert STRATEGIES.get("feddst-noadj")(tiny()).readjust_fraction(1) == 0.0


def test_check_update_rejects_bad_updates():
    fed = Federation(tiny())
    state = fed.initial_state()
    good = ClientUpdate(0, 10, {k: v.clone() for k, v in state.weights.items()},
                        {k: v.clone() for k, v in state.masks.items()})
    budgets = fed.strategy.budgets(state)
    assert check_update(good, state.weights, budgets) is None
    for name in CORRUPTIONS.names():
        bad = CORRUPTIONS.get(name)(good)
        assert check_update(bad, state.weights, budgets) == name
    assert check_update(ClientUpdate(0, 0, good.weights, good.masks), state.weights,
                        budgets) == "samples"


# ------------------------------------------------------------------ the engine


def test_feddst_round_invariants_exact_sparsity_mask_changes_and_grown_at_zero(monkeypatch):
    grown_values = []
    original = MaskReadjust._readjust

    def spy(self, trainer):
        original(self, trainer)
        params = dict(trainer.model.named_parameters())
        grown_values.extend(float(params[n].detach()[g].abs().max()) for n, g in
                            self.grown.items() if g.any())

    monkeypatch.setattr(MaskReadjust, "_readjust", spy)
    config = tiny(rounds=4, readjust_every=2)
    fed = Federation(config)
    budget = sum(fed.strategy.budgets(fed.initial_state()).values())
    records, states = [], []
    summary = run_federated(config, None, progress=records.append)
    state = summary["state"]
    assert grown_values and max(grown_values) == 0.0  # grown weights start at exactly zero
    for rec in records:
        assert rec["mask_kept"] == budget
        assert rec["nonzero"] == budget  # counted from the tensors: exact target sparsity
        assert rec["sparsity"] == pytest.approx(1 - budget / rec["total"])
        readjust = rec["readjust_fraction"] > 0
        assert rec["mask_changed"] == readjust, rec  # changes on readjust rounds only
    assert [r["round"] for r in records if r["mask_changed"]] == [2, 4]
    assert abs(summary["sparsity"] - 0.8) < 0.01
    del states, state


def test_counted_bytes_equal_serialised_sizes_and_sparse_upload_is_smaller():
    sizes: dict[int, list[int]] = {}

    def recording(fed):
        def reply(client, blob, plan):
            out = fed.local_reply(client, blob, plan)
            sizes.setdefault(plan.round, []).append(len(out))
            return out
        return reply

    records = []
    run_federated(tiny(rounds=2, strategy="feddst"), None, reply=recording,
                  progress=records.append)
    for rec in records:
        assert rec["upload_bytes"] == sum(sizes[rec["round"] - 1])
    dense = run_federated(tiny(rounds=2, strategy="fedavg"), None)
    sparse = run_federated(tiny(rounds=2, strategy="feddst"), None)
    ratio = sparse["upload_bytes_per_client_round"] / dense["upload_bytes_per_client_round"]
    # the tiny MLP keeps its output layer (250 of 1810 weights) and biases dense: ~0.4
    assert 0.2 < ratio < 0.45


def _final(summary):
    return summary["state"].weights


@pytest.mark.parametrize("strategy", ["feddst", "fedavgm"])
def test_kill_and_rerun_gives_the_identical_final_model(tmp_path, strategy):
    config = tiny(rounds=5, strategy=strategy)
    straight = _final(run_federated(config, None))
    folder = tmp_path / "run"
    partial = run_federated(config, folder, stop_after=3)
    assert partial == {"finished": False, "round": 3}
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 3
    resumed = run_federated(config, folder)
    assert resumed["rounds"] == 5 and resumed["finished"]
    final = load_final(folder)
    assert all(torch.equal(final[k], straight[k]) for k in straight)  # bit-identical
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 5
    assert (folder / "accuracy_vs_upload.png").exists() and (folder / "split.json").exists()
    assert run_federated(config, folder)["cached"]
    with pytest.raises(ValueError, match="different federated run"):
        run_federated(tiny(rounds=5, strategy=strategy, seed=1), folder)


def test_failing_and_corrupt_clients_are_survived_and_counted():
    config = tiny(rounds=6, fail_rate=0.3, corrupt_rate=0.4)
    records = []
    summary = run_federated(config, None, progress=records.append)
    assert summary["failed"] > 0 and sum(summary["rejected"].values()) > 0
    assert set(summary["rejected"]) <= set(CORRUPTIONS.names())
    for rec in records:
        assert rec["failed"] + rec["replied"] == config.per_round
        assert rec["accepted"] + sum(rec["rejected"].values()) == rec["replied"]
    state = summary["state"]
    assert all(torch.isfinite(v).all() for v in state.weights.values())
    assert summary["nonzero"] == summary["mask_kept"]  # still exactly sparse


def test_min_clients_skips_the_update():
    config = tiny(rounds=2, fail_rate=0.99, min_clients=1)
    summary = run_federated(config, None)
    fed = Federation(config)
    start = fed.initial_state().weights
    assert summary["skipped_rounds"] == 2
    assert all(torch.equal(summary["state"].weights[k], start[k]) for k in start)


def test_static_and_dense_strategies_keep_their_shape():
    static = run_federated(tiny(strategy="static", rounds=3), None)
    assert static["mask_changes"] == 0 and static["nonzero"] == static["mask_kept"]
    dense = run_federated(tiny(strategy="fedavg", rounds=2), None)
    assert dense["sparsity"] < 0.01


# ------------------------------------------------------------------ CLI


def test_cli_fed_run_writes_a_run_folder(cli, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(tiny(rounds=2).to_json())
    code, out, _ = cli(["fed", "run", "--config", str(cfg), "--strategy", "static",
                        "--out", str(tmp_path / "r")])
    assert code in (0, None), out
    assert "static" in out and (tmp_path / "r" / "summary.json").exists()
    import json

    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["strategy"] == "static" and saved["rounds"] == 2


@pytest.mark.parametrize("args, fragment", [
    (["--per-round", "200"], "more clients per round than there are clients"),
    (["--split", "dirichlet:0"], "beta must be > 0"),
    (["--strategy", "fedprox"], "unknown federated strategy 'fedprox'"),
    (["--split", "shards:3", "--clients", "7"], "per_round"),
])
def test_cli_fed_bad_input_is_one_line_exit_2(cli, args, fragment):
    code, _, err = cli(["fed", "run", *args])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err

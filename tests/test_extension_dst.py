"""A new DST method defined in this file only (no library edit), registered, and run end to end
through the public API and the CLI (``--method sensitivity``)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
import torch
from torch import Tensor

from sparseprior.dst import (
    DST_POLICIES,
    METHODS,
    DSTConfig,
    DSTPolicy,
    DSTRunConfig,
    run_dst,
)
from sparseprior.engine import TrainConfig

SYNTH = {"n_train": 256, "n_test": 128, "image_shape": [1, 6, 6], "num_classes": 4}


class Sensitivity(DSTPolicy):
    """Drop the active weights of smallest ``|w * grad|``, grow the largest ``|grad|``."""

    help = "drop smallest |w * grad|, grow largest |grad| (test plug-in)"
    needs_gradient = True
    calls: list[tuple[str, int]] = []

    def drop_scores(self, weights: Mapping[str, Tensor], gradients: Mapping[str, Tensor] | None,
                    step: int) -> Mapping[str, Tensor]:
        assert gradients is not None
        Sensitivity.calls.append(("drop", step))
        return {n: (w * gradients[n]).abs() for n, w in weights.items()}

    def grow_scores(self, weights: Mapping[str, Tensor], gradients: Mapping[str, Tensor] | None,
                    step: int) -> Mapping[str, Tensor]:
        assert gradients is not None
        Sensitivity.calls.append(("grow", step))
        return gradients


@pytest.fixture
def sensitivity():
    """Register the plug-in for one test (``replace`` so reruns in one session work)."""
    DST_POLICIES.register("sensitivity", Sensitivity, replace=True)
    Sensitivity.calls.clear()
    threads = torch.get_num_threads()
    yield Sensitivity
    DST_POLICIES.unregister("sensitivity")
    torch.set_num_threads(threads)


def _config(**dst) -> DSTRunConfig:
    train = TrainConfig(epochs=3, batch_size=32, lr=0.05, device="cpu", num_threads=1,
                        log_every=0, eval_every=0, progress=False)
    return DSTRunConfig(dst=DSTConfig(method="sensitivity", sparsity=0.9, delta_t=4, **dst),
                        model="mlp", model_options={"hidden": [64, 32]}, dataset="synthetic",
                        dataset_options=SYNTH, train=train)


def test_unregistered_method_is_a_clear_error():
    with pytest.raises(ValueError, match="method='sensitivity' is not one of"):
        DSTConfig(method="sensitivity")


def test_new_policy_runs_end_to_end_through_the_api(sensitivity, tmp_path):
    assert "sensitivity" in METHODS                      # METHODS is derived from the registry
    summary = run_dst(_config(), tmp_path / "run")
    assert summary["method"] == "sensitivity" and summary["target_sparsity"] == 0.9
    assert summary["updates"] == 4                       # steps 4, 8, 12, 16 < T_end = 18
    steps = sorted({s for _, s in sensitivity.calls})
    assert steps == [4, 8, 12, 16]
    assert {k for k, _ in sensitivity.calls} == {"drop", "grow"}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    updates = [r for r in records if r["kind"] == "dst_update"]
    assert all(r["method"] == "sensitivity" and r["grown"] > 0 for r in updates)
    # the per-layer counts of the starting mask are kept (the shared mechanism)
    for r in updates:
        assert all(v["active"] == v["target"] for v in r["layers"].values())
    assert summary["mask_density"] == pytest.approx(0.1, abs=2e-3)
    # a different policy really ran: RigL (drop by |w|) ends with other masks
    rigl = run_dst(_config().replace(dst=DSTConfig(method="rigl", sparsity=0.9, delta_t=4)),
                   tmp_path / "rigl")
    assert rigl["updates"] == 4
    digests = [[r["digest"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").open())
                if r["kind"] == "dst_update"] for d in ("run", "rigl")]
    assert digests[0][-1] != digests[1][-1]


def test_new_policy_runs_through_the_cli(sensitivity, cli, tmp_path):
    out = tmp_path / "cli"
    code, stdout, _ = cli(["dst", "train", "--method", "sensitivity", "--sparsity", "0.9",
                           "--delta-t", "4", "--model", "mlp", "--model-options",
                           '{"hidden": [64, 32]}', "--dataset", "synthetic",
                           "--dataset-options", json.dumps(SYNTH), "--epochs", "3",
                           "--batch-size", "32", "--device", "cpu", "--threads", "1",
                           "--out", str(out)])
    assert code == 0
    assert "sensitivity on mlp" in stdout and "4 mask updates" in stdout
    assert json.loads((out / "config.json").read_text())["dst"]["method"] == "sensitivity"
    code, stdout, _ = cli(["dst", "methods"])
    assert code == 0 and "sensitivity: drop smallest |w * grad|" in stdout

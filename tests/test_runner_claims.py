"""The one run-folder contract in the DST and ticket runners: a folder is claimed for its config
(``RunDir.claim``) before any cached result is returned, locked while a run goes on, and default
folder names carry a hash of the non-default settings."""

from __future__ import annotations

import json

import pytest
import torch

from sparseprior.common.runs import RunDir
from sparseprior.dst import DSTConfig, DSTRunConfig, run_dst
from sparseprior.dst.train import default_run_dir as dst_run_dir
from sparseprior.engine import TrainConfig
from sparseprior.tickets.earlybird import EarlyBirdConfig, run_earlybird
from sparseprior.tickets.elastic import ElasticConfig
from sparseprior.tickets.imp import IMPConfig, run_imp
from sparseprior.tickets.imp import default_run_dir as imp_run_dir

SYNTH = {"n_train": 128, "n_test": 64, "image_shape": [1, 6, 6], "num_classes": 4}
TRAIN = TrainConfig(epochs=2, batch_size=32, lr=0.05, device="cpu", num_threads=1,
                    log_every=0, eval_every=0, progress=False)


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _dst(**train) -> DSTRunConfig:
    return DSTRunConfig(dst=DSTConfig(method="set", sparsity=0.8, delta_t=2),
                        model="mlp", model_options={"hidden": [16]}, dataset="synthetic",
                        dataset_options=SYNTH, train=TRAIN.replace(**train))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("claims") / "dst"
    return folder, run_dst(_dst(), folder)


def test_finished_dst_folder_refuses_new_settings_instead_of_its_old_summary(finished):
    folder, summary = finished
    for changed, field in ((_dst(epochs=3), "train.epochs"), (_dst(lr=0.1), "train.lr"),
                           (_dst().replace(dst=DSTConfig(method="rigl", sparsity=0.8,
                                                         delta_t=2)), "dst.method")):
        with pytest.raises(ValueError, match=f"holds a different DST run.*{field}"):
            run_dst(changed, folder)
    # machine settings may differ: the finished summary comes back
    again = run_dst(_dst(num_threads=2, progress=None), folder)
    assert again["cached"] and again["test_accuracy"] == summary["test_accuracy"]
    assert json.loads((folder / "config.json").read_text())["train"]["num_threads"] == 2


def test_a_locked_folder_is_a_clear_error(finished, tmp_path):
    folder, _ = finished
    with RunDir(folder).lock(), pytest.raises(ValueError, match="is in use by pid"):
        run_dst(_dst(), folder)
    with RunDir(tmp_path / "imp").lock(), pytest.raises(ValueError, match="is in use"):
        run_imp(IMPConfig(dataset="synthetic", dataset_options=SYNTH), tmp_path / "imp")


def test_default_folder_names_hash_the_settings_but_not_the_machine():
    base = dst_run_dir(_dst())
    assert base.parent.as_posix() == "runs/dst" and base.name.startswith("mlp-set-0.8-")
    assert dst_run_dir(_dst(epochs=3)) != base and dst_run_dir(_dst(lr=0.1)) != base
    assert dst_run_dir(_dst(device="auto", num_threads=4, progress=True)) == base
    imp = IMPConfig(levels=2)
    assert imp_run_dir(imp) == imp_run_dir(imp.replace(levels=5))   # more levels: same run
    assert imp_run_dir(imp) != imp_run_dir(imp.replace(rate=0.5))


def test_earlybird_claims_its_folder_before_training(tmp_path):
    folder = tmp_path / "eb"
    RunDir(folder).write_json("config.json", EarlyBirdConfig().to_dict())
    other = EarlyBirdConfig(prune_ratio=0.3)
    with pytest.raises(ValueError, match="different Early-Bird experiment.*prune_ratio"):
        run_earlybird(other, folder, device="cpu")
    assert not (folder / "search").exists()


def test_elastic_level_beyond_the_source_is_refused_up_front():
    with pytest.raises(ValueError, match="level=99 is beyond the source IMP run's levels 1..3"):
        ElasticConfig(source=IMPConfig(levels=3), level=99)
    assert ElasticConfig(source=IMPConfig(levels=3), level=3).level == 3


def test_cli_reruns_a_folder_from_its_config_and_refuses_other_flags(finished, cli):
    folder, summary = finished
    code, out, _ = cli(["dst", "train", "--config", str(folder / "config.json"),
                        "--out", str(folder)])
    assert code == 0 and f"test accuracy {summary['test_accuracy']:.4f}" in out
    code, _, err = cli(["dst", "train", "--config", str(folder / "config.json"),
                        "--epochs", "5", "--out", str(folder)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "['train.epochs'] differ" in lines[0]

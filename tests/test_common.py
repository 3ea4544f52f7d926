import json

import pytest
import torch

from sparseprior.common import (
    Config,
    RunDir,
    load_safetensors_checkpoint,
    resolve_device,
    save_safetensors_checkpoint,
)
from sparseprior.common.validation import as_float_tensor, check_range


def test_checkpoint_round_trip_and_kind_check(tmp_path):
    t = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_safetensors_checkpoint(tmp_path / "ck", t, {"n": 4}, kind="solver/LISTA")
    got, header = load_safetensors_checkpoint(tmp_path / "ck.safetensors", kind="solver")
    assert torch.equal(got["w"], t["w"]) and torch.equal(got["b"], t["b"])
    assert header["config"] == {"n": 4}
    with pytest.raises(ValueError, match="expected 'model'"):
        load_safetensors_checkpoint(tmp_path / "ck", kind="model")
    (tmp_path / "ck.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not be read"):
        load_safetensors_checkpoint(tmp_path / "ck")
    with pytest.raises(ValueError, match="not found"):
        load_safetensors_checkpoint(tmp_path / "missing")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_json("a.json", {"x": float("nan"), "y": torch.tensor(2.0)})
    assert json.loads((tmp_path / "run" / "a.json").read_text()) == {"x": "nan", "y": 2.0}
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["a.json"]
    run.log_metrics({"step": 1})
    run.log_metrics({"step": 2})
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_config_validates_and_rejects_unknown_fields():
    import dataclasses

    @dataclasses.dataclass
    class C(Config):
        p: float = 0.5

        def validate(self):
            check_range(self.p, "p", 0, 1, low_inclusive=False)

    assert C.from_dict({"p": 0.2}).p == 0.2
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\]"):
        C(p=0.0)
    with pytest.raises(ValueError, match="unknown field"):
        C.from_dict({"q": 1})


def test_validation_messages():
    with pytest.raises(ValueError, match="NaN/inf"):
        as_float_tensor([1.0, float("nan")], "y")
    with pytest.raises(ValueError, match="2 dimension"):
        as_float_tensor([1.0], "A", ndim=2)
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="not a valid device"):
        resolve_device("tpu9")


def test_phase_store_computes_once_and_resumes(tmp_path):
    from sparseprior.common.runs import PhaseStore, RunDir

    calls = []

    def compute():
        calls.append(1)
        return {"acc": 0.5, "steps": [1, 2]}

    first = PhaseStore(RunDir(tmp_path / "run"))
    assert first.once("train", compute) == {"acc": 0.5, "steps": [1, 2]}
    assert first.resumed == [] and len(calls) == 1
    again = PhaseStore(RunDir(tmp_path / "run"))       # a rerun of the same folder
    assert again.once("train", compute) == {"acc": 0.5, "steps": [1, 2]}
    assert again.resumed == ["train"] and len(calls) == 1
    assert again.get("other") is None


def test_phase_store_recomputes_a_phase_stored_by_another_method_version(tmp_path):
    from sparseprior.common.runs import PhaseStore, RunDir

    run = RunDir(tmp_path / "run")
    PhaseStore(run).once("timing", lambda: {"ratio": 1.5})           # an older folder: v1
    PhaseStore(run).once("search", lambda: {"step": 10})
    current = PhaseStore(run, {"timing": 3})
    assert current.once("search", lambda: {"step": 99}) == {"step": 10}   # unversioned
    assert current.once("timing", lambda: {"ratio": 2.0}) == {"ratio": 2.0}
    assert current.outdated == ["timing"] and current.resumed == ["search"]
    assert current.stored_version("timing") == 3 and current.stored_version("search") == 1
    again = PhaseStore(run, {"timing": 3})
    assert again.once("timing", lambda: {"ratio": 9.9}) == {"ratio": 2.0}
    assert again.outdated == [] and again.resumed == ["timing"]
    newer = PhaseStore(run, {"timing": 4})
    assert newer.get("timing") is None and newer.outdated == ["timing"]


def test_phase_store_second_worker_waits_for_the_first(tmp_path):
    """Two workers on the same phase of one run: the second waits for the first's result
    and never computes it itself."""
    import threading

    from sparseprior.common.runs import PhaseStore, RunDir

    started, release, results = threading.Event(), threading.Event(), {}

    def slow():
        started.set()
        release.wait(5)
        return {"by": "first"}

    def second():
        raise AssertionError("the second worker must not compute a phase being computed")

    first = threading.Thread(target=lambda: results.update(
        a=PhaseStore(RunDir(tmp_path / "run")).once("full", slow)))
    first.start()
    assert started.wait(5)
    waiter = threading.Thread(target=lambda: results.update(
        b=PhaseStore(RunDir(tmp_path / "run")).once("full", second)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and "b" not in results       # blocked on the phase lock
    release.set()
    first.join(5)
    waiter.join(5)
    assert results == {"a": {"by": "first"}, "b": {"by": "first"}}


def test_claim_reads_a_field_added_later_as_its_value_in_older_runs(tmp_path):
    from sparseprior.dst import DSTConfig, DSTRunConfig
    from sparseprior.federated import FedRunConfig

    def older_folder(name: str, config: Config) -> RunDir:
        run = RunDir(tmp_path / name)
        data = config.to_dict()
        section = data.get("dst", data)
        del section["sparse_init"]                      # written before the field existed
        run.write_json("config.json", data)
        return run

    dst = DSTRunConfig(dst=DSTConfig(method="set", sparsity=0.8))
    run = older_folder("dst", dst)
    assert run.claim(dst) is True                       # default = what older runs did
    assert run.read_json("config.json")["dst"]["sparse_init"] == "unscaled"  # now explicit
    run = older_folder("dst2", dst)
    with pytest.raises(ValueError, match=r"dst\.sparse_init"):
        run.claim(dst.replace(dst=dst.dst.replace(sparse_init="rescaled")))
    # the federated default changed when the field came: an older run is not today's default
    fed = FedRunConfig(strategy="static")
    run = older_folder("fed", fed)
    with pytest.raises(ValueError, match="sparse_init"):
        run.claim(fed)
    assert run.claim(fed.replace(sparse_init="unscaled")) is True

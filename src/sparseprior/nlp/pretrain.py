"""EarlyBERT's pre-training variant: the same search during masked-language-model training.

The encoder gets an MLM head (:class:`~sparseprior.nlp.model.MaskedLM`, decoder tied to the
word embeddings), the corpus texts are masked once with BERT's 80/10/10 rule (static masking,
seeded), and the gated model is trained with the MLM loss plus the L1 terms by
:class:`~sparseprior.nlp.search.EarlyBertSearch` until the early-bird draw. The drawn masks slim
the encoder exactly as in fine-tuning; the slim encoder can then continue pre-training or be
fine-tuned (:func:`sparseprior.nlp.experiment.finetune`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from sparseprior.common.runs import RunDir
from sparseprior.nlp import data as nlp_data
from sparseprior.nlp.experiment import EarlyBertConfig
from sparseprior.nlp.model import (
    MaskedLM,
    add_gates,
    heads_per_layer,
    load_encoder,
    load_tokenizer,
    mask_tokens,
    mlm_loss,
)
from sparseprior.nlp.search import EarlyBertSearch
from sparseprior.nlp.slim import slim_


class MaskedTexts(Dataset):
    """Item ``i``: ``({"input_ids": masked (T,), "attention_mask": (T,)}, targets (T,))``."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> None:
        self.ids, self.mask, self.targets = ids, mask, targets

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}, self.targets[i]


def masked_dataset(texts: list[str], tokenizer: Any, *, max_length: int, seed: int,
                   probability: float = 0.15) -> MaskedTexts:
    enc = tokenizer(texts, max_length=max_length, truncation=True, padding="max_length",
                    return_tensors="pt")
    info = {"mask_id": tokenizer.mask_token_id, "vocab_size": len(tokenizer),
            "special_ids": list(tokenizer.all_special_ids)}
    ids, targets = mask_tokens(enc["input_ids"], enc["attention_mask"], info,
                               probability=probability, seed=seed)
    return MaskedTexts(ids, enc["attention_mask"], targets)


def run_mlm_search(config: EarlyBertConfig, run_dir: str | Path | RunDir | None = None
                   ) -> dict[str, Any]:
    """Search tickets during MLM training on the corpus texts (labels are ignored).

    Uses the config's model, data, mask rule, L1 weights, detector, ``search_max_steps``,
    ``batch_size`` and ``lr``. Returns the draw, the masks' head/neuron counts, the search
    records, the MLM loss before/after, and the slim encoder's per-layer head counts; writes
    ``mlm_search.json`` when ``run_dir`` is given.
    """
    from sparseprior.engine.trainer import Trainer

    config.validate()
    tokenizer = load_tokenizer(config.model)
    corpus = nlp_data.load_corpus(config.data, labels=config.labels,
                                  text_column=config.text_column,
                                  label_column=config.label_column)
    train, _, test = nlp_data.split_corpus(corpus, val_fraction=config.val_fraction,
                                           test_fraction=config.test_fraction, seed=config.seed,
                                           max_train=config.max_train, max_eval=config.max_eval)
    train_ds = masked_dataset(train.texts, tokenizer, max_length=config.max_length,
                              seed=config.seed)
    test_ds = masked_dataset(test.texts, tokenizer, max_length=config.max_length,
                             seed=config.seed + 1)
    torch.manual_seed(config.seed)
    model = add_gates(MaskedLM(load_encoder(config.model)), scale=config.coef_lr_scale)
    search = EarlyBertSearch(head_ratio=config.head_ratio, ffn_ratio=config.ffn_ratio,
                             ffn_scope=config.ffn_scope, l1_heads=config.l1_heads,
                             l1_ffn=config.l1_ffn, mask_every=config.mask_every,
                             fifo_size=config.fifo_size, threshold=config.threshold)
    per_epoch = math.ceil(len(train_ds) / config.batch_size)
    tc = config.train_config(steps=config.search_max_steps, schedule="constant",
                             epochs=math.ceil(config.search_max_steps / per_epoch),
                             warmup_epochs=min(config.warmup_steps, config.search_max_steps)
                             / per_epoch)
    trainer = Trainer(model, train_ds, tc, callbacks=[search], loss_fn=mlm_loss)
    before = trainer.evaluate(test_ds)["loss"]
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    after = trainer.evaluate(test_ds)["loss"]
    assert search.ticket is not None
    slim = slim_(model, *search.ticket)
    result = {"drawn": search.drawn, "drawn_step": search.drawn_step, "steps": trainer.step,
              "seconds": seconds, "mlm_loss_before": before, "mlm_loss_after": after,
              "heads_slim": heads_per_layer(slim),
              "ffn_kept": [int(m.sum()) for m in search.ticket[1]],
              "records": search.records}
    if run_dir is not None:
        run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        run.write_json("mlm_search.json", result)
    return result

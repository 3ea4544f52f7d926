"""Physically smaller BERT: remove attention heads and FFN neurons by slicing the weights.

``transformers`` 5 has no ``prune_heads``; here a layer keeping heads ``K`` (of ``H``, head
dimension ``d``) gets query/key/value ``Linear(hidden, |K| d)`` (the rows of the kept heads) and
an attention output ``Linear(|K| d, hidden)`` (the matching columns); a layer keeping FFN neurons
``J`` gets ``intermediate Linear(hidden, |J|)`` and ``output Linear(|J|, hidden)``. Layers may keep
different numbers of heads. With gates present (:func:`~sparseprior.nlp.model.add_gates`) the
kept coefficients are folded into the output projections, so the slim model computes exactly
what the gated model computes with the removed coefficients set to zero.

Masks are per-layer bool vectors, ``True`` = keep: ``head_masks[l]`` of shape ``(H_l,)``,
``ffn_masks[l]`` of shape ``(I_l,)``.

Checkpoint: ``save_slim`` writes ``<name>.safetensors`` + ``<name>.json`` (the BERT config, the
per-layer head and neuron counts, the labels); ``load_slim`` rebuilds the model and checks the
header before allocating anything.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.checkpoint import load_safetensors_checkpoint, save_safetensors_checkpoint
from sparseprior.nlp.model import (
    TextClassifier,
    add_gates,
    ffn_per_layer,
    head_dim,
    heads_per_layer,
    layers,
    new_encoder,
    remove_gates,
    set_coefficients,
)

KIND = "nlp/slim-bert-classifier"
Masks = list[Tensor]


def check_masks(model: nn.Module, head_masks: Sequence[Tensor], ffn_masks: Sequence[Tensor]
                ) -> tuple[Masks, Masks]:
    """Bool CPU copies of the masks after checking their count and shapes against ``model``
    and that every layer keeps at least one head and one neuron."""
    heads, ffn = heads_per_layer(model), ffn_per_layer(model)
    if len(head_masks) != len(heads) or len(ffn_masks) != len(ffn):
        raise ValueError(f"need one head mask and one FFN mask per layer ({len(heads)} layers), "
                         f"got {len(head_masks)} and {len(ffn_masks)}")
    out_h, out_f = [], []
    for i, (hm, fm) in enumerate(zip(head_masks, ffn_masks, strict=True)):
        hm = torch.as_tensor(hm).detach().cpu().flatten().bool()
        fm = torch.as_tensor(fm).detach().cpu().flatten().bool()
        if hm.numel() != heads[i] or fm.numel() != ffn[i]:
            raise ValueError(f"layer {i}: head mask has {hm.numel()} entries (model: {heads[i]} "
                             f"heads), FFN mask {fm.numel()} (model: {ffn[i]} neurons)")
        if not hm.any() or not fm.any():
            raise ValueError(f"layer {i}: every layer must keep at least one head and one FFN "
                             "neuron")
        out_h.append(hm)
        out_f.append(fm)
    return out_h, out_f


def _sliced(linear: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    """A new ``Linear`` keeping output rows (``dim=0``) or input columns (``dim=1``)."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None, device=weight.device,
                    dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            new.bias.copy_(bias.index_select(0, index.to(bias.device)) if dim == 0 else bias)
    return new


def slim_(model: nn.Module, head_masks: Sequence[Tensor], ffn_masks: Sequence[Tensor], *,
          fold: bool = True) -> nn.Module:
    """Remove the masked-out heads and FFN neurons of ``model`` in place (see module doc).

    Gates, if any, are folded (``fold=True``) or dropped, so the result is a plain, smaller
    BERT. Returns ``model``.
    """
    head_masks, ffn_masks = check_masks(model, head_masks, ffn_masks)
    d = head_dim(model)
    remove_gates(model, fold=fold)
    for lay, hm, fm in zip(layers(model), head_masks, ffn_masks, strict=True):
        heads = torch.nonzero(hm).flatten()
        cols = (heads[:, None] * d + torch.arange(d)).flatten()
        att = lay.attention.self
        att.query = _sliced(att.query, cols, 0)
        att.key = _sliced(att.key, cols, 0)
        att.value = _sliced(att.value, cols, 0)
        att.num_attention_heads = int(len(heads))
        att.all_head_size = int(len(heads)) * d
        lay.attention.output.dense = _sliced(lay.attention.output.dense, cols, 1)
        neurons = torch.nonzero(fm).flatten()
        lay.intermediate.dense = _sliced(lay.intermediate.dense, neurons, 0)
        lay.output.dense = _sliced(lay.output.dense, neurons, 1)
    return model


def slim_model(model: nn.Module, head_masks: Sequence[Tensor], ffn_masks: Sequence[Tensor], *,
               fold: bool = True) -> nn.Module:
    """A slim copy of ``model`` (``model`` is left unchanged)."""
    return slim_(copy.deepcopy(model), head_masks, ffn_masks, fold=fold)


def masked_model(model: nn.Module, head_masks: Sequence[Tensor], ffn_masks: Sequence[Tensor]
                 ) -> nn.Module:
    """A copy of ``model`` with gates whose coefficients are zero where the masks remove a
    head/neuron (and unchanged elsewhere): the reference the slim model must equal."""
    head_masks, ffn_masks = check_masks(model, head_masks, ffn_masks)
    masked = add_gates(copy.deepcopy(model))
    from sparseprior.nlp.model import coefficients

    hc, fc = coefficients(masked)
    set_coefficients(masked, [c * m for c, m in zip(hc, head_masks, strict=True)],
                     [c * m for c, m in zip(fc, ffn_masks, strict=True)])
    return masked


def structure_masks(heads: Sequence[int], ffn: Sequence[int], full_heads: int, full_ffn: int
                    ) -> tuple[Masks, Masks]:
    """Masks keeping the first ``heads[l]`` heads and ``ffn[l]`` neurons of each layer (to
    build an empty slim model of a given shape before loading its weights)."""
    hm = [torch.arange(full_heads) < int(h) for h in heads]
    fm = [torch.arange(full_ffn) < int(f) for f in ffn]
    return hm, fm


# --------------------------------------------------------------------------- checkpoint


def save_slim(model: TextClassifier, path: str | Path, *, label_names: Sequence[str] = (),
              meta: dict[str, Any] | None = None) -> Path:
    """Save a (slim) :class:`TextClassifier` as safetensors + JSON; returns the tensor file."""
    if not isinstance(model, TextClassifier):
        raise TypeError(f"save_slim needs a TextClassifier, got {type(model).__name__}")
    enc = model.encoder
    config = {"bert": enc.config.to_dict(), "heads_per_layer": heads_per_layer(model),
              "ffn_per_layer": ffn_per_layer(model),
              "num_labels": int(model.classifier.out_features),
              "label_names": [str(n) for n in label_names]}
    remove = [k for k in model.state_dict() if k.endswith(".raw")]
    if remove:
        raise ValueError("the model still has gates; slim it (slim_) before saving")
    return save_safetensors_checkpoint(path, dict(model.state_dict()), config, kind=KIND,
                                       meta=meta)


def load_slim_weights(model: TextClassifier, path: str | Path) -> TextClassifier:
    """Load the tensors of a :func:`save_slim` file into ``model`` (already slimmed to the same
    structure, e.g. to resume a run); ``ValueError`` if names or shapes differ."""
    tensors, _ = load_safetensors_checkpoint(path, kind=KIND)
    return _load_matching(model, tensors, path)


def _load_matching(model: TextClassifier, tensors: dict[str, Tensor], path: str | Path
                   ) -> TextClassifier:
    expected = model.state_dict()
    if sorted(expected) != sorted(tensors) or any(
            tuple(expected[k].shape) != tuple(tensors[k].shape) for k in expected):
        raise ValueError(f"slim checkpoint {str(path)!r}: tensors do not match the structure "
                         "of the model (or the one in its header)")
    model.load_state_dict(tensors)
    return model


def _int_list(value: Any, name: str, n: int, high: int) -> list[int]:
    if not isinstance(value, list) or len(value) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= high for v in value):
        raise ValueError(f"slim checkpoint: {name} must be {n} integers in [1, {high}], got "
                         f"{value!r}")
    return value


def load_slim(path: str | Path) -> tuple[TextClassifier, dict[str, Any]]:
    """Load :func:`save_slim` output; returns ``(model in eval mode, header)``."""
    from transformers import BertConfig

    tensors, header = load_safetensors_checkpoint(path, kind=KIND)
    cfg = header.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("bert"), dict):
        raise ValueError(f"slim checkpoint {str(path)!r}: header has no 'bert' config")
    bert = cfg["bert"]
    limits = {"num_hidden_layers": 256, "num_attention_heads": 1024, "hidden_size": 65536,
              "intermediate_size": 1 << 20, "vocab_size": 1 << 22,
              "max_position_embeddings": 1 << 16}
    for key, high in limits.items():
        v = bert.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= high:
            raise ValueError(f"slim checkpoint: bert.{key} must be an integer in [1, {high}], "
                             f"got {v!r}")
    n_layers = bert["num_hidden_layers"]
    heads = _int_list(cfg.get("heads_per_layer"), "heads_per_layer", n_layers,
                      bert["num_attention_heads"])
    ffn = _int_list(cfg.get("ffn_per_layer"), "ffn_per_layer", n_layers,
                    bert["intermediate_size"])
    num_labels = cfg.get("num_labels")
    if not isinstance(num_labels, int) or not 1 <= num_labels <= 1 << 16:
        raise ValueError(f"slim checkpoint: num_labels must be a positive integer, got "
                         f"{num_labels!r}")
    config = BertConfig.from_dict(bert)
    model = TextClassifier(new_encoder(config), num_labels)
    hm, fm = structure_masks(heads, ffn, config.num_attention_heads, config.intermediate_size)
    slim_(model, hm, fm)
    return _load_matching(model, tensors, path).eval(), header


# --------------------------------------------------------------------------- ONNX


def export_onnx(model: nn.Module, path: str | Path, example: dict[str, Tensor]) -> dict[str, Any]:
    """Export a :class:`TextClassifier` to ONNX (inputs ``input_ids``, ``attention_mask``,
    dynamic batch and length) and check it against ONNX Runtime on ``example``.

    Returns ``{"path", "max_abs_diff", "bytes"}``; ``ValueError`` if ONNX Runtime is missing.
    """
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ValueError("ONNX export check needs onnxruntime (pip install onnxruntime)") \
            from err
    path = Path(path)
    model = copy.deepcopy(model).cpu().eval()
    enc = getattr(model, "encoder", model)
    if hasattr(enc, "set_attn_implementation"):
        enc.set_attn_implementation("eager")

    class _Wrap(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
            return self.inner({"input_ids": input_ids, "attention_mask": attention_mask})

    wrap = _Wrap(model).eval()
    args = (example["input_ids"].cpu(), example["attention_mask"].cpu())
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(wrap, args, str(tmp), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamo=False, opset_version=17,
                          dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                                        "attention_mask": {0: "batch", 1: "length"},
                                        "logits": {0: "batch"}})
        expected = wrap(*args).numpy()
    tmp.replace(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": args[0].numpy(), "attention_mask": args[1].numpy()})[0]
    diff = float(abs(got - expected).max())
    return {"path": str(path), "max_abs_diff": diff, "bytes": path.stat().st_size}

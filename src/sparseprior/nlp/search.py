"""EarlyBERT's search (Chen et al., ACL 2021): learnable coefficients + L1, early-bird draw.

Every attention head and every FFN intermediate neuron of the (gated) BERT has a coefficient
``c`` (init 1) that scales its output (:func:`~sparseprior.nlp.model.add_gates`). The search
trains the whole network with the task loss plus ``l1_heads * sum |c_head| + l1_ffn * sum
|c_ffn|``. Every ``mask_every`` optimizer steps it draws the masks from the current ``|c|``:

* heads: layer-wise, the ``round(head_ratio * H_l)`` smallest of each layer are removed
  (default 1/3, as in the paper);
* FFN neurons: ``round(ffn_ratio * N)`` smallest, over all layers (``ffn_scope="global"``) or per
  layer (``"layerwise"``); default 40%.

Each layer keeps at least one head and one neuron. The normalised Hamming distance between
consecutive masks is recorded, and the masks go through the Early-Bird FIFO test of
:class:`sparseprior.tickets.earlybird.EarlyBirdDetector` (one detector for heads, one for FFN
neurons): the ticket is drawn when both FIFOs have all masks within ``threshold`` of the newest.

The search is a :class:`~sparseprior.engine.Callback` of the one training loop: ``extra_loss``
adds the L1 terms, ``after_step`` records the coefficients and updates the detectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sparseprior.common.validation import check_choice, check_positive_int, check_range
from sparseprior.engine.callbacks import Callback
from sparseprior.nlp.model import coefficients, gates
from sparseprior.tickets.earlybird import EarlyBirdDetector, hamming_distance

if TYPE_CHECKING:
    from sparseprior.engine.trainer import Trainer

FFN_SCOPES = ("global", "layerwise")


def _n_prune(ratio: float, n: int) -> int:
    """``round(ratio * n)`` (so 1/3 of 12 heads is 4, not 3 by float truncation)."""
    return int(math.floor(ratio * n + 0.5 + 1e-9))


def _keep_largest(scores: Tensor, n_prune: int) -> Tensor:
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if n_prune > 0:
        keep[torch.argsort(scores.flatten(), stable=True)[:n_prune]] = False
    return keep


def prune_masks(scores: Sequence[Tensor], ratio: float, *, scope: str = "layerwise",
                min_keep: int = 1) -> list[Tensor]:
    """Bool keep-masks (one ``(n_l,)`` per layer) removing a ``ratio`` of the entries with the
    smallest score, per layer (``"layerwise"``) or over all layers (``"global"``); every layer
    then keeps at least ``min_keep`` (its highest-scored ones). Ties go to the earlier entry."""
    check_range(float(ratio), "ratio", 0.0, 1.0, high_inclusive=False)
    check_choice(scope, "scope", FFN_SCOPES)
    if not scores:
        raise ValueError("scores must hold at least one layer")
    if scope == "layerwise":
        masks = [_keep_largest(s.float(), _n_prune(ratio, s.numel())) for s in scores]
    else:
        flat = torch.cat([s.flatten().float() for s in scores])
        masks = list(_keep_largest(flat, _n_prune(ratio, flat.numel()))
                     .split([s.numel() for s in scores]))
    out = []
    for s, m in zip(scores, masks, strict=True):
        need = min(int(min_keep), s.numel())
        if int(m.sum()) < need:
            m = m.clone()
            m[torch.argsort(s.flatten().float(), descending=True, stable=True)[:need]] = True
        out.append(m)
    return out


def ticket_masks(head_coef: Sequence[Tensor], ffn_coef: Sequence[Tensor], *,
                 head_ratio: float = 1 / 3, ffn_ratio: float = 0.4, ffn_scope: str = "global"
                 ) -> tuple[list[Tensor], list[Tensor]]:
    """``(head masks, FFN masks)`` from coefficient magnitudes (see module doc)."""
    heads = prune_masks([c.abs() for c in head_coef], head_ratio, scope="layerwise")
    ffn = prune_masks([c.abs() for c in ffn_coef], ffn_ratio, scope=ffn_scope)
    return heads, ffn


def _draw(size: int, keep: int, gen: torch.Generator) -> Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    mask[torch.randperm(size, generator=gen)[:keep]] = True
    return mask


def random_masks(head_masks: Sequence[Tensor], ffn_masks: Sequence[Tensor], *, seed: int = 0
                 ) -> tuple[list[Tensor], list[Tensor]]:
    """The random-ticket control: per layer the same numbers of kept heads and neurons as the
    given masks, at uniformly random positions (seeded)."""
    gen = torch.Generator().manual_seed(int(seed))
    return ([_draw(m.numel(), int(m.sum()), gen) for m in head_masks],
            [_draw(m.numel(), int(m.sum()), gen) for m in ffn_masks])


def even_counts(total: int, sizes: Sequence[int]) -> list[int]:
    """``total`` split over layers of ``sizes`` as evenly as the sizes allow (smaller layers
    capped first; ties: earlier layers take the remainder)."""
    if not 0 <= total <= sum(sizes):
        raise ValueError(f"cannot keep {total} of {sum(sizes)} units")
    counts, left = [0] * len(sizes), total
    for done, i in enumerate(sorted(range(len(sizes)), key=lambda i: (sizes[i], i))):
        counts[i] = min(sizes[i], -(-left // (len(sizes) - done)))
        left -= counts[i]
    return counts


def even_random_masks(head_masks: Sequence[Tensor], ffn_masks: Sequence[Tensor], *,
                      seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """A second random control: the ticket's total numbers of kept heads and of kept neurons,
    spread evenly over the layers (:func:`even_counts`), at random positions. Unlike
    :func:`random_masks` it does not inherit the per-layer allocation the search found."""
    gen = torch.Generator().manual_seed(int(seed))

    def spread(masks: Sequence[Tensor]) -> list[Tensor]:
        counts = even_counts(sum(int(m.sum()) for m in masks), [m.numel() for m in masks])
        return [_draw(m.numel(), k, gen) for m, k in zip(masks, counts, strict=True)]

    return spread(head_masks), spread(ffn_masks)


def flat(masks: Sequence[Tensor]) -> Tensor:
    return torch.cat([m.flatten().bool() for m in masks])


class EarlyBertSearch(Callback):
    """The search as a training-loop callback (the model must have gates).

    Args:
        head_ratio, ffn_ratio, ffn_scope: mask rule (see :func:`ticket_masks`).
        l1_heads, l1_ffn: L1 weights on the head and FFN coefficients.
        mask_every: optimizer steps between masks (the detector's clock).
        fifo_size, threshold: Early-Bird FIFO test (``EarlyBirdDetector``).
        stop_when_drawn: stop training at the draw.

    Attributes after ``fit``: ``records`` (one dict per step: ``step``, ``l1_heads``,
    ``l1_ffn`` (the penalty terms), ``head_coef_mean``/``ffn_coef_mean`` (per layer); at mask
    steps also ``dist_heads``/``dist_ffn`` (to the previous mask) and ``fifo_heads``/``fifo_ffn``
    (max FIFO distance, ``None`` while it fills), ``drawn``), ``drawn_step`` (``None`` if not
    drawn), ``ticket`` (head masks, FFN masks at the draw, else at the last mask step),
    ``ticket_coef`` (the coefficients then), ``mask_steps``.
    """

    def __init__(self, *, head_ratio: float = 1 / 3, ffn_ratio: float = 0.4,
                 ffn_scope: str = "global", l1_heads: float = 1e-4, l1_ffn: float = 1e-4,
                 mask_every: int = 10, fifo_size: int = 5, threshold: float = 0.1,
                 stop_when_drawn: bool = True) -> None:
        check_range(float(head_ratio), "head_ratio", 0.0, 1.0, high_inclusive=False)
        check_range(float(ffn_ratio), "ffn_ratio", 0.0, 1.0, high_inclusive=False)
        check_choice(ffn_scope, "ffn_scope", FFN_SCOPES)
        for name, v in (("l1_heads", l1_heads), ("l1_ffn", l1_ffn)):
            if not math.isfinite(float(v)) or float(v) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.mask_every = check_positive_int(mask_every, "mask_every")
        self.head_ratio, self.ffn_ratio, self.ffn_scope = head_ratio, ffn_ratio, ffn_scope
        self.l1_heads, self.l1_ffn = float(l1_heads), float(l1_ffn)
        self.stop_when_drawn = bool(stop_when_drawn)
        self.det_heads = EarlyBirdDetector(fifo_size, threshold)
        self.det_ffn = EarlyBirdDetector(fifo_size, threshold)
        self.records: list[dict[str, Any]] = []
        self.mask_steps: list[int] = []
        self.drawn_step: int | None = None
        self.ticket: tuple[list[Tensor], list[Tensor]] | None = None
        self.ticket_coef: tuple[list[Tensor], list[Tensor]] | None = None
        self._prev: tuple[Tensor, Tensor] | None = None

    @property
    def drawn(self) -> bool:
        return self.drawn_step is not None

    def extra_loss(self, trainer: Trainer) -> Tensor | None:
        hg, fg = gates(trainer.model)
        penalty = self.l1_heads * sum(g.coef.abs().sum() for g in hg)
        return penalty + self.l1_ffn * sum(g.coef.abs().sum() for g in fg)

    def masks(self, model: torch.nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        hc, fc = coefficients(model)
        return ticket_masks(hc, fc, head_ratio=self.head_ratio, ffn_ratio=self.ffn_ratio,
                            ffn_scope=self.ffn_scope)

    def after_step(self, trainer: Trainer) -> None:
        hc, fc = coefficients(trainer.model)
        rec: dict[str, Any] = {
            "step": trainer.step,
            "l1_heads": self.l1_heads * float(sum(c.abs().sum() for c in hc)),
            "l1_ffn": self.l1_ffn * float(sum(c.abs().sum() for c in fc)),
            "head_coef_mean": [float(c.abs().mean()) for c in hc],
            "ffn_coef_mean": [float(c.abs().mean()) for c in fc]}
        if trainer.step % self.mask_every == 0:
            self._mask_step(trainer, hc, fc, rec)
        self.records.append(rec)

    def _mask_step(self, trainer: Trainer, hc: list[Tensor], fc: list[Tensor],
                   rec: dict[str, Any]) -> None:
        hm, fm = ticket_masks(hc, fc, head_ratio=self.head_ratio, ffn_ratio=self.ffn_ratio,
                              ffn_scope=self.ffn_scope)
        vh, vf = flat(hm), flat(fm)
        if self._prev is not None:
            rec["dist_heads"] = hamming_distance(vh, self._prev[0])
            rec["dist_ffn"] = hamming_distance(vf, self._prev[1])
        self._prev = (vh, vf)
        rec["fifo_heads"] = self.det_heads.update(vh)
        rec["fifo_ffn"] = self.det_ffn.update(vf)
        rec["drawn"] = self.det_heads.drawn and self.det_ffn.drawn
        self.mask_steps.append(trainer.step)
        if self.drawn_step is None:
            self.ticket, self.ticket_coef = (hm, fm), (hc, fc)
            if rec["drawn"]:
                self.drawn_step = trainer.step
                if self.stop_when_drawn:
                    trainer.should_stop = True
        trainer.log(search_drawn=self.drawn)

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records, "mask_steps": self.mask_steps,
                "drawn_step": self.drawn_step, "ticket": self.ticket,
                "ticket_coef": self.ticket_coef, "prev": self._prev,
                "det_heads": self.det_heads.state_dict(), "det_ffn": self.det_ffn.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records, self.mask_steps = list(state["records"]), list(state["mask_steps"])
        self.drawn_step, self.ticket = state["drawn_step"], state["ticket"]
        self.ticket_coef, self._prev = state["ticket_coef"], state["prev"]
        self.det_heads.load_state_dict(state["det_heads"])
        self.det_ffn.load_state_dict(state["det_ffn"])

"""Elastic lottery tickets (Chen et al. 2021, "The Elastic Lottery Ticket Hypothesis").

A ticket (the weights at the rewind step + the IMP mask) found on one depth is transformed to
another depth of the same family by replicating or dropping *blocks*, weights and mask alike,
then retrained with the same schedule and compared with a ticket found by IMP directly on the
target depth at the same density.

Blocks:

* **ResNet-(6n+2)**: the ``n`` :class:`~sparseprior.models.BasicBlock` s of each stage
  (``stages.<s>.<j>``). Block 0 of a stage may downsample, so it is always kept as block 0.
  ``target_depth`` is the ResNet depth (20, 32, 56, ...).
* **MLP** with equal hidden widths: the hidden-to-hidden linear layers (``features.2``,
  ``features.4``, ...). The input layer and the classifier are always kept. ``target_depth`` is
  the number of hidden layers (``[256, 256]`` has 2 and 1 hidden-to-hidden block).

A mapping says which source block each target block copies, as ``"src:tgt,tgt;src:tgt"``:
ResNet-20 -> ResNet-32 (3 -> 5 blocks per stage) ``"0:0;1:1,2;2:3,4"``; ResNet-56 -> ResNet-32
(9 -> 5) keeping every other block ``"0:0;2:1;4:2;6:3;8:4"``. One mapping is used for every
ResNet stage; give one per stage separated by ``|`` to differ. In Python a mapping is a list
``m`` with ``m[target] = source``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseprior.common.config import Config
from sparseprior.common.runs import RunDir
from sparseprior.common.validation import check_positive_int
from sparseprior.data import DatasetSplits
from sparseprior.models import MLP, ResNet, check_resnet_depth
from sparseprior.sparsity import MaskSet
from sparseprior.tickets.imp import (
    RESUMABLE_FIELDS,
    IMPConfig,
    build_seeded_model,
    load_splits,
    load_ticket,
    run_imp,
    save_weights,
    train_ticket,
)

log = logging.getLogger(__name__)

BlockMapping = list[int]


# --------------------------------------------------------------------------- mappings


def format_mapping(mapping: Sequence[int]) -> str:
    """``[0, 1, 1, 2, 2]`` -> ``"0:0;1:1,2;2:3,4"`` (sources in increasing order)."""
    targets: dict[int, list[int]] = {}
    for tgt, src in enumerate(mapping):
        targets.setdefault(int(src), []).append(tgt)
    return ";".join(f"{src}:{','.join(map(str, tgts))}" for src, tgts in sorted(targets.items()))


def check_mapping(mapping: Sequence[int], n_source: int, n_target: int, *,
                  keep_first: bool = True) -> BlockMapping:
    """Validate ``mapping[target] = source``; return it as a list of ints.

    Every target block ``0..n_target-1`` needs exactly one source in ``0..n_source-1``; with
    ``keep_first`` target block 0 must come from source block 0 and source block 0 may feed no
    other target block (it may downsample).
    """
    mapping = [int(s) for s in mapping]
    if len(mapping) != n_target:
        raise ValueError(f"mapping covers {len(mapping)} target blocks but the target has "
                         f"{n_target}; give one source for each of the blocks 0..{n_target - 1}")
    bad = sorted({s for s in mapping if not 0 <= s < n_source})
    if bad:
        raise ValueError(f"mapping uses source block(s) {bad} but the source has blocks "
                         f"0..{n_source - 1}")
    if keep_first:
        if mapping[0] != 0:
            raise ValueError(f"target block 0 must come from source block 0 (block 0 of a stage "
                             f"is always kept: it may downsample), got source {mapping[0]}")
        extra = [t for t, s in enumerate(mapping) if s == 0 and t != 0]
        if extra:
            raise ValueError(f"source block 0 may only become target block 0 (it may "
                             f"downsample), but it is also mapped to target block(s) {extra}")
    return mapping


def parse_mapping(text: str, n_source: int, n_target: int, *, keep_first: bool = True
                  ) -> BlockMapping:
    """Parse ``"0:0;1:1,2;2:3,4"`` (``source:target,target;...``) into ``mapping[target] =
    source`` and validate it (:func:`check_mapping`). ``ValueError`` with the reason if bad."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"mapping must be a string like '0:0;1:1,2;2:3,4', got {text!r}")
    found: dict[int, int] = {}
    for part in text.replace(" ", "").strip(";").split(";"):
        if not re.fullmatch(r"\d+:\d+(,\d+)*", part):
            raise ValueError(f"mapping entry {part!r} in {text!r} is not 'source:target[,target"
                             f"...]' with block indices, e.g. '1:1,2'")
        src, tgts = part.split(":")
        for tgt in (int(t) for t in tgts.split(",")):
            if tgt in found:
                raise ValueError(f"mapping {text!r} gives target block {tgt} twice (from "
                                 f"sources {found[tgt]} and {src}); each target needs exactly "
                                 f"one source")
            if not 0 <= tgt < n_target:
                raise ValueError(f"mapping {text!r} names target block {tgt} but the target "
                                 f"has blocks 0..{n_target - 1}")
            found[tgt] = int(src)
    missing = [t for t in range(n_target) if t not in found]
    if missing:
        raise ValueError(f"mapping {text!r} leaves target block(s) {missing} without a source; "
                         f"every target block 0..{n_target - 1} needs exactly one")
    return check_mapping([found[t] for t in range(n_target)], n_source, n_target,
                         keep_first=keep_first)


def replicate_mapping(n_source: int, n_target: int, *, keep_first: bool = True) -> BlockMapping:
    """Stretch (or evenly subsample) blocks in order, each source repeated about equally.

    With ``keep_first``, block 0 stays block 0 and blocks ``1..`` are spread over targets
    ``1..``: 3 -> 5 gives ``[0, 1, 1, 2, 2]`` (``"0:0;1:1,2;2:3,4"``). Without it every block is
    interchangeable: 1 -> 3 gives ``[0, 0, 0]``.
    """
    check_positive_int(n_source, "n_source")
    check_positive_int(n_target, "n_target")
    if not keep_first:
        return [j * n_source // n_target for j in range(n_target)]
    if n_target > 1 and n_source == 1:
        raise ValueError("cannot replicate: the source has only block 0 per stage, which is "
                         "kept once; use a source with at least 2 blocks per stage")
    if n_target == 1:
        return [0]
    return [0] + [1 + (j - 1) * (n_source - 1) // (n_target - 1) for j in range(1, n_target)]


def every_other_mapping(n_source: int, n_target: int | None = None) -> BlockMapping:
    """Squeeze by keeping every other block ``0, 2, 4, ...``: 9 -> 5 gives ``[0, 2, 4, 6, 8]``
    (``"0:0;2:1;4:2;6:3;8:4"``). ``n_target`` defaults to ``ceil(n_source / 2)``."""
    check_positive_int(n_source, "n_source")
    n_target = (n_source + 1) // 2 if n_target is None else check_positive_int(n_target,
                                                                               "n_target")
    if 2 * (n_target - 1) > n_source - 1:
        raise ValueError(f"every other block of {n_source} gives at most "
                         f"{(n_source + 1) // 2} blocks, not {n_target}")
    return [2 * j for j in range(n_target)]


def default_mapping(n_source: int, n_target: int, *, keep_first: bool = True) -> BlockMapping:
    """Replicate to grow (:func:`replicate_mapping`); to shrink keep evenly spaced blocks,
    first and last included (9 -> 5: every other block)."""
    if n_target >= n_source or n_target == 1:
        return replicate_mapping(n_source, n_target, keep_first=keep_first)
    return [round(j * (n_source - 1) / (n_target - 1)) for j in range(n_target)]


# --------------------------------------------------------------------------- the transform


@dataclasses.dataclass
class ElasticTicket:
    """A transformed ticket.

    Attributes:
        model: the target-depth model holding the transformed weights (mask applied).
        masks: the transformed :class:`MaskSet` (fits ``model``).
        mappings: one block mapping per ResNet stage (one list for an MLP); ``m[target] =
            source``.
        source_of: target parameter/buffer name -> the source name it was copied from.
    """

    model: nn.Module
    masks: MaskSet
    mappings: list[BlockMapping]
    source_of: dict[str, str]

    @property
    def mapping_text(self) -> str:
        """The mappings as strings (``|`` between ResNet stages when they differ)."""
        texts = [format_mapping(m) for m in self.mappings]
        return texts[0] if len(set(texts)) == 1 else "|".join(texts)


@dataclasses.dataclass
class _Plan:
    """How to build the target and where each target tensor comes from."""

    build: Callable[[], nn.Module]
    mappings: list[BlockMapping]
    rename: Callable[[str], str]


def _resolve(mapping: str | Sequence[int] | Sequence[Sequence[int]] | None, n_source: int,
             n_target: int, n_groups: int, keep_first: bool) -> list[BlockMapping]:
    if mapping is None:
        return [default_mapping(n_source, n_target, keep_first=keep_first)] * n_groups
    if isinstance(mapping, str):
        parts = mapping.split("|")
        if len(parts) not in (1, n_groups):
            raise ValueError(f"mapping {mapping!r} has {len(parts)} '|'-separated parts; give "
                             f"one for all stages or one per stage ({n_groups})")
        parsed = [parse_mapping(p, n_source, n_target, keep_first=keep_first) for p in parts]
        return parsed * n_groups if len(parsed) == 1 else parsed
    items = list(mapping)
    if items and all(isinstance(m, Sequence) and not isinstance(m, str) for m in items):
        if len(items) != n_groups:
            raise ValueError(f"give one mapping per stage ({n_groups}), got {len(items)}")
        return [check_mapping(m, n_source, n_target, keep_first=keep_first) for m in items]
    return [check_mapping(items, n_source, n_target, keep_first=keep_first)] * n_groups


def _resnet_plan(model: ResNet, target_depth: int, mapping: Any) -> _Plan:
    n_target = check_resnet_depth(target_depth)
    counts = model.blocks_per_stage
    if len(set(counts)) != 1:
        raise ValueError(f"the source ResNet has unequal blocks per stage {counts}")
    mappings = _resolve(mapping, counts[0], n_target, len(counts), keep_first=True)
    pattern = re.compile(r"^stages\.(\d+)\.(\d+)\.(.+)$")

    def rename(name: str) -> str:
        hit = pattern.match(name)
        if hit is None:
            return name
        stage, block, rest = int(hit[1]), int(hit[2]), hit[3]
        return f"stages.{stage}.{mappings[stage][block]}.{rest}"

    def build() -> nn.Module:
        return ResNet(target_depth, model.in_channels, model.num_classes, model.input_size,
                      width=model.width)

    return _Plan(build, mappings, rename)


def _mlp_plan(model: MLP, target_depth: int, mapping: Any) -> _Plan:
    hidden = list(model.hidden)
    if len(set(hidden)) != 1:
        raise ValueError(f"Elastic MLP transforms need equal hidden widths (the replicated "
                         f"hidden-to-hidden layers must have one shape), got hidden={hidden}")
    check_positive_int(target_depth, "target_depth")
    if len(hidden) < 2 or target_depth < 2:
        raise ValueError(f"an MLP needs at least 2 hidden layers on both sides to have "
                         f"hidden-to-hidden layers to copy; got source hidden={hidden} and "
                         f"target_depth={target_depth} hidden layers")
    n_source, n_target = len(hidden) - 1, target_depth - 1
    mappings = _resolve(mapping, n_source, n_target, 1, keep_first=False)
    pattern = re.compile(r"^features\.(\d+)\.(.+)$")

    def rename(name: str) -> str:
        hit = pattern.match(name)
        if hit is None or int(hit[1]) < 2:
            return name
        block = int(hit[1]) // 2 - 1
        return f"features.{2 * (mappings[0][block] + 1)}.{hit[2]}"

    def build() -> nn.Module:
        shape = tuple(model.input_shape)
        return MLP(model.input_dim, [hidden[0]] * target_depth, model.num_classes,
                   input_shape=shape if len(shape) == 3 else None)  # type: ignore[arg-type]

    return _Plan(build, mappings, rename)


def plan_transform(model: nn.Module, target_depth: int,
                   mapping: str | Sequence[int] | Sequence[Sequence[int]] | None = None
                   ) -> _Plan:
    """Validate a transform of ``model`` to ``target_depth`` (no weights touched)."""
    if isinstance(model, ResNet):
        return _resnet_plan(model, target_depth, mapping)
    if isinstance(model, MLP):
        return _mlp_plan(model, target_depth, mapping)
    raise ValueError(f"Elastic LTH supports ResNet and MLP models, got {type(model).__name__}")


@torch.no_grad()
def transform_ticket(
    model: nn.Module,
    masks: MaskSet,
    target_depth: int,
    mapping: str | Sequence[int] | Sequence[Sequence[int]] | None = None,
    *,
    state: Mapping[str, Tensor] | None = None,
) -> ElasticTicket:
    """Transform a ticket to another depth by copying/dropping blocks (weights and masks).

    Args:
        model: the source :class:`ResNet` or equal-width :class:`MLP`, holding the ticket's
            weights (usually the rewind-step weights with the mask applied).
        masks: the source mask; must fit ``model`` (``ValueError`` otherwise).
        target_depth: ResNet depth ``6n+2``, or the number of hidden layers of an MLP.
        mapping: ``"0:0;1:1,2;2:3,4"``, a list ``m[target] = source`` (a list per stage for
            ResNet), or ``None`` for :func:`default_mapping`.
        state: weights to transform instead of ``model.state_dict()``.

    Returns:
        an :class:`ElasticTicket`: a new model whose every copied tensor equals its source
        exactly, and its mask (masked weights zeroed).
    """
    masks.check_compatible(model)
    plan = plan_transform(model, target_depth, mapping)
    source = dict(state) if state is not None else model.state_dict()
    target = plan.build().to(next(model.parameters()).device)
    source_of = {name: plan.rename(name) for name in target.state_dict()}
    missing = sorted({s for s in source_of.values() if s not in source})
    if missing:
        raise ValueError(f"the source weights lack {missing[:5]} needed by the target")
    target.load_state_dict({t: source[s].clone() for t, s in source_of.items()}, strict=True)
    params = dict(target.named_parameters())
    target_masks = MaskSet({t: masks[s] for t, s in source_of.items()
                            if t in params and s in masks})
    target_masks.check_compatible(target)
    target_masks.apply_(target)
    return ElasticTicket(target, target_masks, plan.mappings, source_of)


# --------------------------------------------------------------------------- the experiment


def default_elastic_source() -> IMPConfig:
    """The default source experiment: IMP (3 levels of 20%) on an MLP with hidden [256, 256]."""
    return IMPConfig(model="mlp", model_options={"hidden": [256, 256]})


def check_level(level: int, levels: int) -> int:
    """``ValueError`` unless the ticket ``level`` is one of the source's levels ``1..levels``."""
    check_positive_int(level, "level")
    if level > levels:
        raise ValueError(f"level={level} is beyond the source IMP run's levels 1..{levels}; "
                         f"choose a level <= {levels} or run more levels (--levels)")
    return level


@dataclasses.dataclass
class ElasticConfig(Config):
    """Transform an IMP ticket to another depth, retrain it, compare with IMP on that depth.

    Attributes:
        source: the IMP experiment that finds the source ticket (run in ``<run>/source`` when
            ``source_run`` is not given); by default an MLP with two hidden layers of 256.
        source_run: an existing IMP run folder to take the ticket from (its own config then
            replaces ``source``; unfinished levels are trained there).
        level: the IMP level of the ticket, in ``1..source.levels`` (``None``:
            ``source.levels``).
        target_depth: ResNet depth (6n+2) or number of MLP hidden layers.
        mapping: block mapping (see the module docstring); ``None``: :func:`default_mapping`.
        compare: also run IMP directly on the target depth, to the transformed ticket's
            density, in ``<run>/target_imp``.
    """

    source: IMPConfig = dataclasses.field(default_factory=default_elastic_source)
    source_run: str | None = None
    level: int | None = None
    target_depth: int = 4
    mapping: str | None = None
    compare: bool = True

    def validate(self) -> None:
        if not isinstance(self.source, IMPConfig):
            raise ValueError(f"source must be an IMPConfig, got {type(self.source).__name__} "
                             f"(use ElasticConfig.from_dict for dicts)")
        if self.level is not None:
            check_positive_int(self.level, "level")
            if self.source_run is None:
                check_level(self.level, self.source.levels)
        check_positive_int(self.target_depth, "target_depth")
        if self.mapping is not None and not isinstance(self.mapping, str):
            raise ValueError(f"mapping must be a string like '0:0;1:1,2;2:3,4', "
                             f"got {self.mapping!r}")


@dataclasses.dataclass
class ElasticResult:
    """Summaries of an Elastic LTH run: ``source`` ticket, ``transformed`` ticket, the direct
    IMP ticket on the target depth (``target_imp``) and the dense target (``target_dense``);
    the last two are ``None`` without ``compare``."""

    run_dir: Path
    mapping: str
    source: dict[str, Any]
    transformed: dict[str, Any]
    target_imp: dict[str, Any] | None = None
    target_dense: dict[str, Any] | None = None

    def rows(self) -> list[dict[str, Any]]:
        """One row per network: what it is, its depth, counted density and test accuracy."""
        items = [("source ticket (IMP)", self.source), ("elastic ticket (transformed)",
                                                          self.transformed),
                 ("target ticket (IMP on target)", self.target_imp),
                 ("target dense", self.target_dense)]
        return [{"network": name, "depth": s.get("depth"), "level": s.get("level"),
                 "density": s["density"], "test_acc": s["test_accuracy"]}
                for name, s in items if s is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "mapping": self.mapping, "source": self.source,
                "transformed": self.transformed, "target_imp": self.target_imp,
                "target_dense": self.target_dense, "rows": self.rows()}


def model_depth(model: nn.Module) -> int:
    """ResNet depth, or the number of hidden layers of an MLP (what ``target_depth`` means)."""
    if isinstance(model, ResNet):
        return model.depth
    if isinstance(model, MLP):
        return len(model.hidden)
    raise ValueError(f"Elastic LTH supports ResNet and MLP models, got {type(model).__name__}")


def target_imp_config(source: IMPConfig, model: nn.Module, target_depth: int, level: int,
                      density: float) -> IMPConfig:
    """The IMP experiment on the target depth that reaches ``density`` after ``level`` levels
    (rate ``1 - density ** (1 / level)``, no controls)."""
    if isinstance(model, ResNet):
        options = {k: v for k, v in source.model_options.items() if k != "depth"}
        name, options = "resnet", {**options, "depth": target_depth}
    else:
        name, options = "mlp", {"hidden": [int(model.hidden[0])] * target_depth}
    rate = 1.0 - density ** (1.0 / level)
    return source.replace(model=name, model_options=options, levels=level, rate=rate,
                          ablations=[], ablation_levels=None)


#: Fields that may change between an Elastic run and its continuation.
ELASTIC_RESUMABLE_FIELDS = (*RESUMABLE_FIELDS, "compare")
KIND = "Elastic LTH experiment"


def default_run_dir(config: ElasticConfig, root: str | Path = "runs/elastic") -> Path:
    """``<root>/<source model>-d<target depth>-<hash of the non-default settings>``."""
    from sparseprior.engine.experiment import run_name

    prefix = f"{config.source.model}-d{config.target_depth}"
    return Path(root) / run_name(prefix, config, ignore=ELASTIC_RESUMABLE_FIELDS)


def run_elastic(
    config: ElasticConfig,
    run_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    splits: DatasetSplits | None = None,
) -> ElasticResult:
    """Find (or load) the source ticket, transform it, retrain it, compare; resumable.

    Folder: ``config.json``, ``source/`` (the source IMP run, unless ``source_run``),
    ``transformed/`` (the transformed ticket: ``ticket.*`` weights at the rewind step,
    ``masks.*``, training files, ``summary.json``), ``target_imp/`` (IMP on the target depth)
    and ``summary.json``. Bad levels, mappings or models fail before any training; the folder
    is claimed for the experiment (:meth:`RunDir.claim`; more source levels, ``compare`` and
    machine settings may differ) and locked while it runs.
    """
    source_dir = Path(config.source_run) if config.source_run else Path(run_dir) / "source"
    src_cfg = config.source
    if config.source_run:
        if not (source_dir / "config.json").exists():
            raise ValueError(f"source_run {str(source_dir)!r} is not an IMP run folder "
                             f"(no config.json)")
        src_cfg = IMPConfig.from_json(source_dir / "config.json")
    if src_cfg.levels < 1:
        raise ValueError(f"the source IMP run has levels={src_cfg.levels}; a ticket needs at "
                         f"least one pruned level")
    level = check_level(config.level if config.level is not None else src_cfg.levels,
                        src_cfg.levels)
    splits = splits if splits is not None else load_splits(src_cfg)
    probe = build_seeded_model(src_cfg, splits, src_cfg.init_seed)
    plan = plan_transform(probe, config.target_depth, config.mapping)  # fail fast
    run = RunDir(run_dir)
    with run.lock():
        run.claim(config.replace(source=src_cfg), may_differ=ELASTIC_RESUMABLE_FIELDS,
                  kind=KIND)
        return _transform_and_compare(config, src_cfg, source_dir, level, plan, run, splits,
                                      device)


def _transform_and_compare(config: ElasticConfig, src_cfg: IMPConfig, source_dir: Path,
                           level: int, plan: Any, run: RunDir, splits: DatasetSplits,
                           device: str | torch.device | None) -> ElasticResult:
    run_imp(src_cfg, source_dir, device=device, splits=splits)
    _, model, masks = load_ticket(source_dir, level)
    ticket = transform_ticket(model, masks, config.target_depth, plan.mappings)
    train = src_cfg.train if device is None else src_cfg.train.replace(device=str(device))
    folder = RunDir(run.path / "transformed")
    save_weights(folder.file("ticket"), ticket.model, {"mapping": ticket.mapping_text})
    info = {"variant": "elastic", "level": level, "depth": config.target_depth,
            "source_depth": model_depth(model), "mapping": ticket.mapping_text,
            "target_density": ticket.masks.density(), "rewind_step": src_cfg.rewind_step}
    transformed = train_ticket(ticket.model, ticket.masks, splits, train, folder.path,
                               info=info, keep_checkpoints=src_cfg.keep_level_checkpoints)
    transformed.pop("cached", None)
    log.info("elastic ticket depth %d -> %d (%s): density %.4f, test acc %.4f",
             info["source_depth"], config.target_depth, ticket.mapping_text,
             transformed["density"], transformed["test_accuracy"])
    source = {**RunDir(source_dir / f"level_{level:02d}").read_json("summary.json"),
              "depth": model_depth(model)}
    result = ElasticResult(run.path, ticket.mapping_text, source, transformed)
    if config.compare:
        target_cfg = target_imp_config(src_cfg, model, config.target_depth, level,
                                       ticket.masks.density())
        direct = run_imp(target_cfg, run.path / "target_imp", device=device, splits=splits)
        result.target_imp = {**direct.levels[level], "depth": config.target_depth}
        result.target_dense = {**direct.levels[0], "depth": config.target_depth}
    run.write_json("summary.json", result.to_dict())
    return result


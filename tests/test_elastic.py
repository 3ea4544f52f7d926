"""Elastic LTH: block mappings, exact copies of weights and masks, clear errors, the experiment."""

from __future__ import annotations

import pytest
import torch

from sparseprior.engine import TrainConfig
from sparseprior.models import build_model
from sparseprior.sparsity import MaskSet, SparsityConfig, sparsify_
from sparseprior.tickets.elastic import (
    ElasticConfig,
    default_mapping,
    every_other_mapping,
    format_mapping,
    parse_mapping,
    replicate_mapping,
    run_elastic,
    transform_ticket,
)
from sparseprior.tickets.imp import IMPConfig


def _resnet(depth: int):
    torch.manual_seed(depth)
    model = build_model(f"resnet{depth}", in_channels=1, num_classes=4, input_size=8, width=0.25)
    masks = sparsify_(model, SparsityConfig(sparsity=0.7, score="random", seed=depth))
    return model, masks


def _mlp(hidden):
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=1, num_classes=4, input_size=6, hidden=hidden)
    masks = sparsify_(model, SparsityConfig(sparsity=0.6))
    return model, masks


def _assert_same_module(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_mapping_helpers():
    assert replicate_mapping(3, 5) == [0, 1, 1, 2, 2]
    assert format_mapping([0, 1, 1, 2, 2]) == "0:0;1:1,2;2:3,4"
    assert parse_mapping("0:0;1:1,2;2:3,4", 3, 5) == [0, 1, 1, 2, 2]
    assert every_other_mapping(9) == [0, 2, 4, 6, 8]
    assert format_mapping(every_other_mapping(9)) == "0:0;2:1;4:2;6:3;8:4"
    assert default_mapping(9, 5) == every_other_mapping(9, 5)
    assert default_mapping(3, 5) == replicate_mapping(3, 5)
    assert replicate_mapping(1, 3, keep_first=False) == [0, 0, 0]
    assert parse_mapping(" 0:0 ; 2:1 ", 3, 2) == [0, 2]


def test_resnet20_to_32_copies_blocks_and_masks_exactly():
    source, masks = _resnet(20)
    ticket = transform_ticket(source, masks, 32, "0:0;1:1,2;2:3,4")
    target = ticket.model
    assert target.blocks_per_stage == [5, 5, 5] and ticket.mapping_text == "0:0;1:1,2;2:3,4"
    for s in range(3):
        for j, src in enumerate([0, 1, 1, 2, 2]):
            _assert_same_module(target.stages[s][j], source.stages[s][src])
            for pname, _ in target.stages[s][j].named_parameters():
                tname, sname = f"stages.{s}.{j}.{pname}", f"stages.{s}.{src}.{pname}"
                if sname in masks:
                    assert torch.equal(ticket.masks[tname], masks[sname])
    _assert_same_module(target.conv1, source.conv1)
    _assert_same_module(target.classifier, source.classifier)
    ticket.masks.check_compatible(target)
    assert len(ticket.masks) == len(masks) + 2 * 3 * 2  # 2 more blocks x 3 stages x 2 convs
    for name, mask in ticket.masks.items():
        assert not dict(target.named_parameters())[name].detach()[~mask].any()
    assert target(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_resnet56_to_32_keeps_every_other_block():
    source, masks = _resnet(56)
    ticket = transform_ticket(source, masks, 32)  # default when shrinking: every other block
    assert ticket.mapping_text == "0:0;2:1;4:2;6:3;8:4"
    for s in range(3):
        for j in range(5):
            _assert_same_module(ticket.model.stages[s][j], source.stages[s][2 * j])
    assert ticket.model(torch.randn(1, 1, 8, 8)).shape == (1, 4)


def test_mlp_hidden_layers_are_replicated():
    source, masks = _mlp([16, 16])
    ticket = transform_ticket(source, masks, 4)
    target = ticket.model
    assert target.hidden == [16, 16, 16, 16] and ticket.mapping_text == "0:0,1,2"
    layers = dict(target.named_modules())
    src_layers = dict(source.named_modules())
    for tname, sname in [("features.0", "features.0"), ("features.2", "features.2"),
                         ("features.4", "features.2"), ("features.6", "features.2"),
                         ("classifier", "classifier")]:
        _assert_same_module(layers[tname], src_layers[sname])
        if f"{sname}.weight" in masks:
            assert torch.equal(ticket.masks[f"{tname}.weight"], masks[f"{sname}.weight"])
    assert target(torch.randn(3, 1, 6, 6)).shape == (3, 4)
    # shrinking back drops the copies
    back = transform_ticket(target, ticket.masks, 2)
    _assert_same_module(back.model, source)
    assert back.masks == masks


@pytest.mark.parametrize("mapping, fragment", [
    ("0:1;1:0,2;2:3,4", "target block 0 must come from source block 0"),
    ("0:0,1;1:2;2:3,4", "source block 0 may only become target block 0"),
    ("0:0;1:1,2", "leaves target block\\(s\\) \\[3, 4\\] without a source"),
    ("0:0;1:1,2;3:3,4", "source block\\(s\\) \\[3\\]"),
    ("0:0;1:1,2;2:2,3,4", "gives target block 2 twice"),
    ("0:0;1:1,2;2:3,9", "names target block 9"),
    ("0-0;1:1", "is not 'source:target"),
    ("0:0;1:1,2;2:3,4|0:0", "one for all stages or one per stage"),
])
def test_bad_resnet_mappings_are_clear_errors(mapping, fragment):
    source, masks = _resnet(20)
    with pytest.raises(ValueError, match=fragment):
        transform_ticket(source, masks, 32, mapping)


def test_other_bad_inputs_are_clear_errors():
    source, masks = _resnet(20)
    with pytest.raises(ValueError, match="not a CIFAR ResNet depth"):
        transform_ticket(source, masks, 33)
    mlp, mlp_masks = _mlp([16, 16])
    with pytest.raises(ValueError, match="mask does not fit this model"):
        transform_ticket(source, mlp_masks, 32)
    unequal, unequal_masks = _mlp([16, 8])
    with pytest.raises(ValueError, match="equal hidden widths.*\\[16, 8\\]"):
        transform_ticket(unequal, unequal_masks, 4)
    single, single_masks = _mlp([16])
    with pytest.raises(ValueError, match="at least 2 hidden layers"):
        transform_ticket(single, single_masks, 3)
    lenet = build_model("lenet5", in_channels=1, num_classes=4, input_size=28)
    with pytest.raises(ValueError, match="supports ResNet and MLP"):
        transform_ticket(lenet, MaskSet.dense(lenet), 3)


def _source_config() -> IMPConfig:
    return IMPConfig(
        model="mlp", model_options={"hidden": [16, 16]}, dataset="synthetic",
        dataset_options={"n_train": 128, "n_test": 64, "image_shape": [1, 6, 6],
                         "num_classes": 4},
        levels=1, init_seed=1,
        train=TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=2e-3, weight_decay=0.0,
                          device="cpu", progress=False, log_every=0, num_threads=1))


def test_run_elastic_compares_with_imp_at_the_same_density(tmp_path):
    config = ElasticConfig(source=_source_config(), target_depth=3)
    result = run_elastic(config, tmp_path / "el")
    rows = result.rows()
    assert [r["depth"] for r in rows] == [2, 3, 3, 3]
    transformed, direct = result.transformed, result.target_imp
    assert abs(transformed["nonzero"] - direct["nonzero"]) <= len(transformed["layer_density"])
    assert (tmp_path / "el" / "summary.json").exists()
    with pytest.raises(ValueError, match="different Elastic LTH experiment.*target_depth"):
        run_elastic(config.replace(target_depth=4), tmp_path / "el")
    # reusing the source run from its folder gives the same transformed ticket
    again = run_elastic(ElasticConfig(source_run=str(tmp_path / "el" / "source"),
                                      target_depth=3, compare=False), tmp_path / "el2")
    assert again.transformed["test_accuracy"] == transformed["test_accuracy"]


def test_run_elastic_fails_fast_on_a_bad_mapping(tmp_path):
    config = ElasticConfig(source=_source_config(), target_depth=3, mapping="0:0")
    with pytest.raises(ValueError, match="target block\\(s\\) \\[1\\] without a source"):
        run_elastic(config, tmp_path / "el")
    assert not (tmp_path / "el" / "source").exists()


def test_run_elastic_on_resnet14_to_20(tmp_path):
    source = _source_config().replace(model="resnet", model_options={"depth": 14, "width": 0.25},
                                      dataset_options={"n_train": 64, "n_test": 32,
                                                       "image_shape": [1, 8, 8],
                                                       "num_classes": 4})
    result = run_elastic(ElasticConfig(source=source, target_depth=20), tmp_path / "r")
    assert result.mapping == "0:0;1:1,2"
    assert [r["depth"] for r in result.rows()] == [14, 20, 20, 20]
    assert abs(result.transformed["nonzero"] - result.target_imp["nonzero"]) <= len(
        result.transformed["layer_density"])

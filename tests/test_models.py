import copy
import math

import pytest
import torch
from torch import nn

from sparseprior.data import load_dataset
from sparseprior.models import (
    MLP,
    MODELS,
    VGG,
    BasicBlock,
    LeNet5,
    ResNet,
    build_model,
    build_model_for,
    get_output_layer,
    lenet_300_100,
)

SHAPES = [(1, 28), (3, 32)]
NEEDS_32 = {"vgg11", "vgg16"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("channels", "size"), SHAPES)
def test_forward_shapes_and_output_layer(name, channels, size):
    if name in NEEDS_32 and size < 32:
        with pytest.raises(ValueError, match="input_size=28 is too small"):
            build_model(name, in_channels=channels, num_classes=7, input_size=size)
        return
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=7, input_size=size)
    model.eval()
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert model.input_shape == (channels, size, size)
    assert model.example_input(3).shape == (3, channels, size, size)
    # output layer: named as in named_modules, the last Linear, producing the logits
    modules = dict(model.named_modules())
    head = modules[model.output_layer_name]
    assert head is get_output_layer(model) is model.output_layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert isinstance(head, nn.Linear) and head is linears[-1] and head.out_features == 7
    captured = {}
    head.register_forward_hook(lambda mod, inp, o: captured.setdefault("out", o))
    assert torch.equal(model(x), captured["out"])


def test_lenet300_and_lenet5_parameter_counts():
    assert n_params(build_model("lenet300")) == 266_610
    assert n_params(lenet_300_100()) == 266_610
    assert n_params(MLP(784, [300, 100], 10)) == 266_610
    assert n_params(build_model("mlp", hidden=[300, 100])) == 266_610
    assert n_params(build_model("mlp", hidden=[50])) == 784 * 50 + 50 + 50 * 10 + 10
    assert n_params(LeNet5()) == 61_706  # the classic LeNet-5 count with ReLU/max-pool
    # MLP built from a flat size accepts flat or image-shaped input
    mlp = MLP(64, [16, 16, 16], 3)
    assert mlp(torch.randn(4, 64)).shape == (4, 3) and mlp(torch.randn(4, 1, 8, 8)).shape == (4, 3)
    assert len([m for m in mlp.modules() if isinstance(m, nn.Linear)]) == 4


@pytest.mark.parametrize(("name", "n"), [("resnet20", 3), ("resnet32", 5), ("resnet56", 9)])
def test_resnet_blocks(name, n):
    model = build_model(name, in_channels=3, input_size=32)
    depth = int(name[len("resnet"):])
    assert isinstance(model.stages, nn.ModuleList) and len(model.stages) == 3
    assert all(isinstance(s, nn.Sequential) for s in model.stages)
    assert model.blocks_per_stage == [n, n, n] and model.depth == depth
    assert all(isinstance(b, BasicBlock) for b in model.blocks())
    # only block 0 of stages 1 and 2 downsamples / changes channels
    assert [[b.downsamples for b in s] for s in model.stages] == [
        [False] * n, [True] + [False] * (n - 1), [True] + [False] * (n - 1)]
    assert [s[0].stride for s in model.stages] == [1, 2, 2]
    convs = [m for name_, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and "shortcut" not in name_]
    assert len(convs) + 1 == depth  # 6n+2 = stem conv + 2 per block + classifier
    assert model.stage_channels == (16, 32, 64)


def test_resnet20_parameter_count_and_depth_argument():
    assert n_params(build_model("resnet20", in_channels=3, input_size=32)) == 272_474
    model = build_model("resnet", depth=14, in_channels=1, input_size=28)
    assert model.blocks_per_stage == [2, 2, 2]
    assert n_params(build_model("resnet", depth=20)) == n_params(build_model("resnet20"))


def test_resnet_blocks_can_be_replicated_and_dropped():
    torch.manual_seed(0)
    model = ResNet(20, in_channels=1, num_classes=10, input_size=28)
    x = torch.randn(2, 1, 28, 28)
    for stage in model.stages:
        stage.append(copy.deepcopy(stage[-1]))  # replicate the last block
    assert model.blocks_per_stage == [4, 4, 4] and model.depth == 26
    assert model(x).shape == (2, 10)
    for stage in model.stages:
        del stage[1:]  # keep only block 0, which may downsample
    assert model.blocks_per_stage == [1, 1, 1] and model.depth == 8
    assert model(x).shape == (2, 10)


def test_width_multiplier_and_init():
    wide = build_model("resnet20", width=2, in_channels=3, input_size=32)
    assert wide.stage_channels == (32, 64, 128) and wide.classifier.in_features == 128
    assert wide(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    half = build_model("vgg-small", width=0.5, in_channels=1, input_size=28)
    assert half.classifier.in_features == 128
    torch.manual_seed(0)
    model = build_model("resnet56", in_channels=3, input_size=32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.stages[2][4].conv1  # 64*9 fan-in: Kaiming std sqrt(2/576)
    assert abs(float(conv.weight.detach().std()) - math.sqrt(2 / 576)) < 0.005
    assert torch.all(model.classifier.bias == 0)
    zero = build_model("resnet20", zero_init_residual=True)
    assert all(torch.all(b.bn2.weight == 0) for b in zero.blocks())
    torch.manual_seed(1)
    a = build_model("lenet5")
    torch.manual_seed(1)
    b = build_model("lenet5")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_vgg_cfg():
    model = VGG([8, "M", 16], in_channels=1, num_classes=3, input_size=10)
    assert model(torch.randn(2, 1, 10, 10)).shape == (2, 3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2


def test_build_model_for_dataset_splits():
    splits = load_dataset("synthetic", n_train=16, n_test=4, num_classes=3, image_shape=(1, 8, 8))
    model = build_model_for("mlp", splits, hidden=[8])
    x, _ = splits.train[:5]
    assert model(x).shape == (5, 3)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match=r"name='resnet18' is unknown; allowed: \["):
        build_model("resnet18")
    with pytest.raises(ValueError, match=r"depth=21 .*6n\+2"):
        build_model("resnet", depth=21)
    with pytest.raises(ValueError, match="depth=2 "):
        ResNet(2)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['depth'\]"):
        build_model("resnet20", depth=32)
    with pytest.raises(ValueError, match=r"option\(s\) \['hidden'\]; allowed: none"):
        build_model("lenet5", hidden=[3])
    with pytest.raises(ValueError, match=r"input_size=8 is too small for LeNet-5.*>= 12"):
        build_model("lenet5", input_size=8)
    with pytest.raises(ValueError, match="input_size"):
        build_model("mlp", input_size=0)
    with pytest.raises(ValueError, match="input_size"):
        build_model("resnet20", input_size=(28, 28, 3))
    with pytest.raises(ValueError, match="in_channels"):
        build_model("lenet300", in_channels=0)
    with pytest.raises(ValueError, match="width"):
        build_model("resnet20", width=0)
    with pytest.raises(ValueError, match="cfg entries"):
        build_model("vgg-small", cfg=[64, "X"])
    with pytest.raises(ValueError, match="cfg='vgg99' is unknown"):
        VGG("vgg99")
    # a wrong input at forward time names the expected shape
    with pytest.raises(ValueError, match=r"expects input x of shape \(batch, 1, 28, 28\)"):
        build_model("lenet5")(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expects input x of shape \(batch, 3, H, W\)"):
        build_model("resnet20", in_channels=3, input_size=32)(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="784 values per example"):
        build_model("lenet300")(torch.randn(2, 3, 32, 32))

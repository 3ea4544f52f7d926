"""ResNet-20 (width 1.0) on Fashion-MNIST inputs: how much faster can a conv net run here?

Latency only (the weights' values do not change the work): a ResNet-20 is built (seeded), its
BatchNorm statistics are set by a few forward passes over real images, and these deployments
are timed against fp32 PyTorch at batch 1 and 64 on one thread:

* ``fp32 ORT``: the model in ONNX Runtime (graph optimisations fold BatchNorm);
* ``int8 QDQ ORT``: ONNX Runtime static int8 (QDQ: per-channel int8 weights, uint8
  activations calibrated on 256 training images), which quantizes Conv as well as Gemm;
* ``structured r``: channel slimming removes a fraction ``r`` of every coupled channel group
  (``compress.structured``), then the slim model in fp32 PyTorch, fp32 ORT and int8 QDQ ORT.

Also a sparse-conv probe: each of ResNet-20's three 3x3 conv shapes with 90% of its weights
zero, as ``unfold`` (im2col) + the numba CSR kernel of :mod:`sparseprior.compress.kernels` vs
``F.conv2d`` on the dense weight (mkldnn), both one thread, interleaved.

Sizes: ONNX bytes of each deployment (fp32 / int8 weights) vs the fp32 ONNX file.

    OMP_NUM_THREADS=1 python benchmarks/compress_conv_latency.py --out runs/conv_latency

Prints tables and writes ``results.json``. Accuracy is NOT measured here (untrained weights):
the accuracy half of the issue's ResNet-20 target needs training to convergence.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sparseprior.common.results import format_table  # noqa: E402
from sparseprior.compress.export import export_onnx, ort_run, ort_session  # noqa: E402
from sparseprior.compress.latency import measure_latency, torch_runner  # noqa: E402
from sparseprior.compress.qdq import ort_static_int8  # noqa: E402
from sparseprior.compress.structured import StructuredConfig, structured_prune  # noqa: E402
from sparseprior.data import load_dataset  # noqa: E402
from sparseprior.models import build_model  # noqa: E402


def calibrated_resnet20(train_x: torch.Tensor, seed: int) -> torch.nn.Module:
    """A seeded ResNet-20 whose BatchNorm running statistics come from real images."""
    torch.manual_seed(seed)
    model = build_model("resnet20", in_channels=1, num_classes=10, input_size=28)
    model.train()
    with torch.no_grad():
        for i in range(0, 1024, 128):
            model(train_x[i:i + 128])
    return model.eval()


def deployments(model: torch.nn.Module, calib: torch.Tensor, ratios: list[float]
                ) -> dict[str, tuple[object, bytes]]:
    """name -> (runner factory input -> callable, ONNX bytes)."""
    example = calib[:1]
    out: dict[str, tuple[object, bytes]] = {}

    def add(prefix: str, net: torch.nn.Module) -> None:
        fp32 = export_onnx(net, example)
        int8 = ort_static_int8(fp32, calib)
        out[f"{prefix}fp32 PyTorch"] = (("torch", net), fp32)
        out[f"{prefix}fp32 ORT"] = (("ort", ort_session(fp32)), fp32)
        out[f"{prefix}int8 QDQ ORT"] = (("ort", ort_session(int8)), int8)

    add("", model)
    for r in ratios:
        slim, _ = structured_prune(model, StructuredConfig(ratio=r), example)
        add(f"structured {r:g}: ", slim.eval())
    return out


def runner(kind_obj: tuple[str, object], x: torch.Tensor):
    kind, obj = kind_obj
    if kind == "torch":
        return torch_runner(obj, x)
    arr = np.ascontiguousarray(x.numpy())
    return lambda: ort_run(obj, arr)


def bench_model(deps: dict, test_x: torch.Tensor, batch: int, rounds: int) -> dict:
    x = test_x[:batch].contiguous()
    runners = {name: runner(obj, x) for name, (obj, _) in deps.items()}
    lat = measure_latency(runners, rounds=rounds, calls=max(1, 32 // batch), warmup=3)
    ratios = lat.ratio_stats("fp32 PyTorch")
    rows = []
    fp32_bytes = len(deps["fp32 ORT"][1])
    for name, (_, onnx) in deps.items():
        median, q1, q3 = ratios[name]
        rows.append({"deployment": name, "ms": round(lat.median_ms[name], 4),
                     "speed-up vs fp32 PyTorch": round(median, 2),
                     "IQR": f"{q1:.2f}-{q3:.2f}",
                     "ONNX KB": round(len(onnx) / 1024, 1),
                     "size x": round(fp32_bytes / len(onnx), 2)})
    return {"batch": batch, "rows": rows, "rounds": rounds}


def im2col_csr(codes: torch.Tensor, scale: float):
    """``x (B, C, H, W) -> conv3x3(x, codes * scale, padding=1)`` as ``unfold`` (im2col) + the
    numba CSR kernel over the int8 codes (rows = output channels)."""
    from sparseprior.compress.kernels import jit_kernels
    from sparseprior.compress.serve import _compressed

    csr_mat = jit_kernels()["csr_mat"]
    out_ch = codes.shape[0]
    ptr, idx, val = _compressed(codes.reshape(out_ch, -1).numpy().astype(np.int8), "row")
    scales = np.full(out_ch, scale, np.float32)
    bias = np.zeros(out_ch, np.float32)

    def run(x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        cols = F.unfold(x, 3, padding=1)                          # (B, C*9, H*W)
        h = np.ascontiguousarray(cols.permute(1, 0, 2).reshape(cols.shape[1], -1).numpy())
        y = csr_mat(ptr, idx, val, scales, bias, h, False)        # (C_out, B*H*W)
        return torch.from_numpy(y).reshape(out_ch, batch, height, width).permute(1, 0, 2, 3)
    return run


def sparse_conv_probe(rounds: int, density: float = 0.1, seed: int = 0) -> list[dict]:
    """im2col + numba CSR vs F.conv2d for ResNet-20's 3x3 conv shapes at ``density``."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for channels, size in ((16, 28), (32, 14), (64, 7)):
        w = torch.randn(channels, channels, 3, 3, generator=g)
        w[torch.rand(w.shape, generator=g) > density] = 0
        codes = torch.round(w * 20).clamp(-127, 127)
        weight = codes / 20
        sparse = im2col_csr(codes, 1 / 20)
        for batch in (1, 64):
            x = torch.randn(batch, channels, size, size, generator=g).relu()
            diff = float((sparse(x) - F.conv2d(x, weight, padding=1)).abs().max())
            lat = measure_latency(
                {"conv2d": lambda x=x, w=weight: F.conv2d(x, w, padding=1),
                 "im2col+CSR": lambda x=x, f=sparse: f(x)},
                rounds=rounds, calls=max(1, 16 // batch), warmup=2)
            median, q1, q3 = lat.ratio_stats("conv2d")["im2col+CSR"]
            rows.append({"conv": f"{channels}->{channels} 3x3 @{size}x{size}", "batch": batch,
                         "density": density, "conv2d ms": round(lat.median_ms["conv2d"], 4),
                         "im2col+CSR ms": round(lat.median_ms["im2col+CSR"], 4),
                         "sparse speed-up": round(median, 2),
                         "IQR": f"{q1:.2f}-{q3:.2f}", "max |diff|": f"{diff:.1e}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/conv_latency"))
    parser.add_argument("--ratios", default="0.5,0.7", help="structured channel ratios")
    parser.add_argument("--rounds-b1", type=int, default=200)
    parser.add_argument("--rounds-b64", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    splits = load_dataset("fashion-mnist")
    train_x, test_x = splits.train.tensors[0], splits.test.tensors[0]
    model = calibrated_resnet20(train_x, args.seed)
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    deps = deployments(model, train_x[:256], ratios)
    result = {"params": sum(p.numel() for p in model.parameters()),
              "batches": [bench_model(deps, test_x, 1, args.rounds_b1),
                          bench_model(deps, test_x, 64, args.rounds_b64)],
              "sparse_conv": sparse_conv_probe(max(10, args.rounds_b64)),
              "threads": 1}
    result["seconds"] = round(time.time() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    for res in result["batches"]:
        print(f"\nbatch {res['batch']} ({res['rounds']} interleaved rounds, one thread):")
        print(format_table(res["rows"]))
    print("\nsparse conv probe (90% zero weights):")
    print(format_table(result["sparse_conv"]))
    print(f"\n{result['seconds']} s; results in {args.out / 'results.json'}")


if __name__ == "__main__":
    main()

"""The packed file served from its codes vs the bare fp32 dense chain and ONNX Runtime fp32.

For a packed MLP (LeNet-300-100 at >= 90% sparsity, built with the storage recipe, see
docs/compress_edge.md) and each batch size:

* ``served``: :class:`sparseprior.compress.serve.ServedModel` planned at that batch size on
  real Fashion-MNIST test images (standardised, as the model was trained);
* ``bare fp32 chain``: ``F.linear``/``relu`` on the decoded weights, no module, no checks (the
  input already flattened);
* ``ORT fp32``: the decoded model exported to ONNX, ONNX Runtime, one intra-op thread;
* ``served kernels only``: the served model's compiled chain (``forward_rows``) on the same
  batches as numpy arrays (no tensor checks or conversions): what the call overhead costs;
* ``decoded module``: ``deployable_copy(unpack(path))``, the decoded model as a plain
  ``nn.Module`` (for reference; ``unpack`` itself keeps fake-quantizing layers, much slower).

Timing: one thread, ``--rounds`` interleaved rounds (order rotating), each candidate called
``max(3, 200 // batch)`` times per round; per-round ratios ``t_baseline / t_served``, their
median and inter-quartile range. Inputs cycle through the first ``256 // batch`` test
batches (the same sequence for every candidate), so a zero-skipping kernel is not timed on one
image. Outputs of the served model are checked against the decoded model on 2,000 test
images (max |diff|), and both accuracies on the whole test set are reported.

    OMP_NUM_THREADS=1 python benchmarks/compress_serve.py runs/serve_lenet300/packed.sppk \\
        --batch 1 --batch 64 --rounds 200 --out runs/compress_serve
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from sparseprior.common.results import format_table  # noqa: E402
from sparseprior.compress.export import (  # noqa: E402
    deployable_copy,
    export_onnx,
    ort_run,
    ort_session,
)
from sparseprior.compress.latency import measure_latency  # noqa: E402
from sparseprior.compress.serve import (  # noqa: E402
    ServedModel,
    available_kernels,
    bare_dense_chain,
)
from sparseprior.data import load_dataset  # noqa: E402


def ratio_stats(lat, baseline: str, candidate: str) -> dict[str, float]:
    """Median and quartiles over rounds of ``t_baseline / t_candidate``."""
    median, q1, q3 = lat.ratio_stats(baseline)[candidate]
    return {"median": median, "q1": q1, "q3": q3}


def cycling(fn, inputs: list[torch.Tensor]):
    """A zero-argument runner calling ``fn`` on the next of ``inputs`` (round robin)."""
    it = itertools.cycle(inputs)
    return lambda: fn(next(it))


def bench_batch(path: Path, batch: int, test_x: torch.Tensor, rounds: int, plan_rounds: int
                ) -> dict:
    n = max(1, 256 // batch)  # distinct batches, cycled: not one lucky image
    imgs = [test_x[i * batch:(i + 1) * batch].contiguous() for i in range(n)]
    flat = [x.reshape(batch, -1).contiguous() for x in imgs]
    served = ServedModel.from_packed(path, batch_size=batch, example=test_x[:max(batch, 64)],
                                     rounds=plan_rounds)
    decoded = deployable_copy(served.reference)  # plain nn.Linear layers, no fake-quant
    chain = bare_dense_chain(served.layers)
    session = ort_session(export_onnx(decoded, test_x[:1]))
    arrays = [x.numpy() for x in flat]  # what the compiled chain sees
    runners = {"served": cycling(served, flat), "bare fp32 chain": cycling(chain, flat),
               "served kernels only": cycling(served.forward_rows, arrays),
               "ORT fp32": cycling(lambda x: ort_run(session, x), imgs),  # its own input shape
               "decoded module": cycling(decoded, flat)}
    lat = measure_latency(runners, rounds=rounds, calls=max(3, 200 // batch), warmup=5)
    return {"batch": batch, "plan": served.plan_rows(),
            "median_ms": lat.median_ms, "iqr_ms": lat.iqr_ms,
            "vs_bare": ratio_stats(lat, "bare fp32 chain", "served"),
            "vs_ort": ratio_stats(lat, "ORT fp32", "served"),
            "vs_module": ratio_stats(lat, "decoded module", "served")}


def check_outputs(path: Path, test_x: torch.Tensor, test_y: torch.Tensor) -> dict:
    served = ServedModel.from_packed(path, batch_size=64, kernels=available_kernels(), rounds=1)
    with torch.inference_mode():
        ref = served.reference(test_x)
    got = torch.cat([served(test_x[i:i + 500]) for i in range(0, len(test_x), 500)])
    diff = float((got[:2000] - ref[:2000]).abs().max())
    return {"max_abs_diff": diff, "served_acc": float((got.argmax(1) == test_y).float().mean()),
            "decoded_acc": float((ref.argmax(1) == test_y).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packed", type=Path, help="packed .sppk file of an MLP")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (1 and 64)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--plan-rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/compress_serve"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    splits = load_dataset("fashion-mnist")
    test_x, test_y = splits.test.tensors
    result = {"packed": str(args.packed), "bytes": args.packed.stat().st_size,
              "check": check_outputs(args.packed, test_x, test_y),
              "batches": [bench_batch(args.packed, b, test_x, args.rounds, args.plan_rounds)
                          for b in args.batch or [1, 64]],
              "rounds": args.rounds, "threads": 1}
    result["seconds"] = round(time.time() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["check"]))
    for res in result["batches"]:
        print(f"\nbatch {res['batch']} plan:")
        print(format_table(res["plan"]))
        rows = [{"candidate": k, "median ms": round(v, 4),
                 "IQR ms": f"{res['iqr_ms'][k][0]:.4f}-{res['iqr_ms'][k][1]:.4f}"}
                for k, v in res["median_ms"].items()]
        print(format_table(rows))
        for key in ("vs_bare", "vs_ort", "vs_module"):
            s = res[key]
            print(f"served speed-up {key}: median {s['median']:.2f}x "
                  f"(IQR {s['q1']:.2f}-{s['q3']:.2f})")
    print(f"\n{result['seconds']} s; results in {args.out / 'results.json'}")


if __name__ == "__main__":
    main()

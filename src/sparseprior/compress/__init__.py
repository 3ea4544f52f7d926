"""Compression: prune (unstructured, structured), quantize (k-bit, power-of-two, PTQ/QAT, int8),
factorize (low rank, SmartExchange), one pipeline, a real packed file, measured latency.

::

    from sparseprior.compress import Recipe, compress_, pack, unpack
    result = compress_(model, Recipe(steps=[{"kind": "prune", "options": {"sparsity": 0.9}},
                                            {"kind": "quantize", "options": {"bits": 4}}]),
                       test_set=splits.test, model_name="lenet300")
    info = pack(result.model, "model.sppk", model_name="lenet300")   # info.size: bytes on disk
    model = unpack("model.sppk")                                       # a runnable model

Extension points: a compression step is a function registered with :func:`register_step`
(see :mod:`~sparseprior.compress.steps`); a new layer class registers how it is described,
rebuilt and made plain with :func:`register_layer` (see :mod:`~sparseprior.compress.layers`).
"""

from sparseprior.compress.arch import build_from_architecture, describe_architecture
from sparseprior.compress.export import (
    check_onnx,
    deployable_copy,
    export_onnx,
    ort_int8,
    ort_run,
    ort_session,
)
from sparseprior.compress.latency import LatencyResult, measure_latency, torch_runner
from sparseprior.compress.layers import LAYER_TYPES, LayerType, layer_type_of, register_layer
from sparseprior.compress.lowrank import (
    LowRankConfig,
    LowRankConv2d,
    LowRankLinear,
    factorize_,
    factorize_layer,
)
from sparseprior.compress.pack import PackInfo, pack, read_header, unpack, unpack_state
from sparseprior.compress.pipeline import (
    CompressResult,
    StepReport,
    accuracy,
    compress_,
    count_cost,
    evaluate,
)
from sparseprior.compress.prune import GradualPruning, PruneConfig, prune_
from sparseprior.compress.quantize import (
    QuantConv2d,
    QuantizedTensor,
    QuantLinear,
    QuantSpec,
    dequantize,
    dynamic_int8,
    fake_quantize,
    freeze_quantized_,
    quantize_,
    quantize_tensor,
    snap_to_grid,
)
from sparseprior.compress.recipe import QuantizeConfig, Recipe, Step, load_recipe
from sparseprior.compress.smartexchange import (
    SmartExchangeConfig,
    SmartExchangeConv2d,
    SmartExchangeLinear,
    se_decompose,
    smartexchange_,
)
from sparseprior.compress.steps import STEPS, StepState, StepType, register_step
from sparseprior.compress.structured import (
    StructuredConfig,
    apply_unit_masks_,
    prune_units,
    structured_prune,
    unit_masks,
)

__all__ = [
    "LAYER_TYPES",
    "STEPS",
    "LayerType",
    "StepState",
    "StepType",
    "layer_type_of",
    "register_layer",
    "register_step",
    "CompressResult",
    "LatencyResult",
    "LowRankConfig",
    "LowRankConv2d",
    "LowRankLinear",
    "PackInfo",
    "PruneConfig",
    "GradualPruning",
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "QuantizeConfig",
    "QuantizedTensor",
    "Recipe",
    "SmartExchangeConfig",
    "SmartExchangeConv2d",
    "SmartExchangeLinear",
    "Step",
    "StepReport",
    "StructuredConfig",
    "accuracy",
    "apply_unit_masks_",
    "build_from_architecture",
    "check_onnx",
    "compress_",
    "count_cost",
    "deployable_copy",
    "dequantize",
    "describe_architecture",
    "dynamic_int8",
    "evaluate",
    "export_onnx",
    "factorize_",
    "factorize_layer",
    "fake_quantize",
    "freeze_quantized_",
    "load_recipe",
    "measure_latency",
    "ort_int8",
    "ort_run",
    "ort_session",
    "pack",
    "prune_",
    "prune_units",
    "quantize_",
    "quantize_tensor",
    "read_header",
    "se_decompose",
    "smartexchange_",
    "snap_to_grid",
    "structured_prune",
    "torch_runner",
    "unit_masks",
    "unpack",
    "unpack_state",
]

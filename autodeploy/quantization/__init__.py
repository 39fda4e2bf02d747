"""Quantization: configs, weight quantizers (FP8, INT8 / INT4 weight-only), AWQ / GPTQ calibration,
sensitivity planning, pre-quantized checkpoints and accuracy metrics.

The graph side lives in autodeploy/transforms/quantize_*.py (Stage.QUANTIZE); the ops in
autodeploy/backends/torch/quant_linear.py; the GPU int4 kernel in autodeploy/backends/triton/int4_gemm.py.
"""

from autodeploy.quantization.config import (  # noqa: F401
    Fp8Config,
    Int4WeightOnlyConfig,
    Int8WeightOnlyConfig,
    QuantConfig,
)

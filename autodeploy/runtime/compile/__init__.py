"""The compile backend: torch.compile of the cached graph, CUDA graphs per decode bucket, and the
single-copy step metadata they read (metadata.py, buckets.py, model.py)."""

from autodeploy.runtime.compile.model import BACKENDS, CompiledModel, compile_model

__all__ = ["BACKENDS", "CompiledModel", "compile_model"]

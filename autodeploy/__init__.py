"""autodeploy: any Hugging Face causal LM, exported, rewritten and served fast."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["optimize", "Runtime", "SamplingParams", "RequestOutput", "AutoDeployError", "load_recipe", "__version__"]


def __getattr__(name: str):
    # Lazy: `import autodeploy` must not pull torch/transformers until something is used.
    if name == "optimize":
        from autodeploy.api import optimize

        return optimize
    if name == "Runtime":
        from autodeploy.runtime.runtime import Runtime

        return Runtime
    if name == "SamplingParams":
        from autodeploy.runtime.sampling import SamplingParams

        return SamplingParams
    if name == "RequestOutput":
        from autodeploy.runtime.outputs import RequestOutput

        return RequestOutput
    if name == "AutoDeployError":
        from autodeploy.errors import AutoDeployError

        return AutoDeployError
    if name == "load_recipe":
        from autodeploy.recipe import load_recipe

        return load_recipe
    raise AttributeError(f"module 'autodeploy' has no attribute {name!r}")

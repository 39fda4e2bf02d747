"""Export of HF models to FX graphs (torch.export, non-strict, dynamic batch and sequence)."""

from autodeploy.export.export import LogitsOnly, export_model

__all__ = ["LogitsOnly", "export_model"]

"""Calibration data for AWQ / GPTQ / sensitivity: token sequences from text the user gives.

    calibration:
      text_file: corpus.txt        # a plain text file, or
      texts: ["...", "..."]        # a list of strings, or
      token_ids: [[1, 2, ...]]     # token ids directly (models without a tokenizer)
      num_sequences: 32            # windows of seq_len tokens cut from the tokenized text
      seq_len: 128

With none of the three, the English text shipped in autodeploy/data/calibration_en.txt is used,
so calibration works offline (about 3600 SmolLM2 tokens: 28 windows of 128; GPTQ needs a few
thousand tokens before its Hessian stops overfitting the calibration text). Texts are joined with blank lines, tokenized once and cut into
consecutive windows; a text too short for num_sequences windows gives fewer (never repeats).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from autodeploy.errors import RecipeError

DEFAULT_TEXT = "calibration_en.txt"
PPL_TEXT = "ppl_en.txt"


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    text_file: str | None = Field(None, description="Plain-text file to calibrate on.")
    texts: list[str] | None = Field(None, description="Strings to calibrate on (joined with blank lines).")
    token_ids: list[list[int]] | None = Field(None, description="Token id sequences (skips the tokenizer).")
    num_sequences: int = Field(32, ge=1, description="Calibration windows (batch) cut from the text (fewer if it is short).")
    seq_len: int = Field(128, ge=2, description="Tokens per calibration window.")


def data_text(name: str) -> str:
    """A text shipped in autodeploy/data (calibration_en.txt, ppl_en.txt)."""
    return resources.files("autodeploy").joinpath("data", name).read_text(encoding="utf-8")


def calibration_text(cfg: CalibrationConfig) -> str:
    if cfg.text_file is not None:
        path = Path(cfg.text_file).expanduser()
        if not path.is_file():
            raise RecipeError(f"calibration.text_file {cfg.text_file}: no such file")
        return path.read_text(encoding="utf-8")
    if cfg.texts is not None:
        if not any(t.strip() for t in cfg.texts):
            raise RecipeError("calibration.texts: every string is empty")
        return "\n\n".join(cfg.texts)
    return data_text(DEFAULT_TEXT)


def windows(ids: list[int], num_sequences: int, seq_len: int) -> torch.Tensor:
    """Consecutive windows [n, seq_len] of `ids` (n <= num_sequences; the window shrinks for a short text)."""
    if len(ids) < 2:
        raise RecipeError(f"calibration text is too short ({len(ids)} tokens)")
    seq_len = min(seq_len, len(ids))
    n = max(1, min(num_sequences, len(ids) // seq_len))
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def calibration_tokens(cfg: CalibrationConfig, tokenizer: Any = None) -> torch.Tensor:
    """input_ids [n, s] for the calibration pass."""
    if cfg.token_ids is not None:
        seqs = [s for s in cfg.token_ids if len(s) >= 2]
        if not seqs:
            raise RecipeError("calibration.token_ids: every sequence needs at least two tokens")
        s = min(min(len(x) for x in seqs), cfg.seq_len)
        return torch.tensor([x[:s] for x in seqs[: cfg.num_sequences]], dtype=torch.long)
    if tokenizer is None:
        raise RecipeError(
            "calibration needs a tokenizer for its text (this model has none): give calibration.token_ids instead"
        )
    ids = list(tokenizer(calibration_text(cfg), add_special_tokens=False)["input_ids"])
    return windows(ids, cfg.num_sequences, cfg.seq_len)


def context_tokenizer(ctx) -> Any:
    """The model's tokenizer, from the transform context: ctx.extra['tokenizer'], else loaded from
    ctx.extra['source'] (autodeploy.optimize puts the resolved source there)."""
    tok = ctx.extra.get("tokenizer")
    if tok is not None:
        return tok
    src = ctx.extra.get("source")
    if src is None:
        return None
    from autodeploy.models.factory import load_tokenizer

    tok = load_tokenizer(src)
    ctx.extra["tokenizer"] = tok
    return tok


def fit_batch(tokens: torch.Tensor, dynamic_dims: dict | None) -> torch.Tensor:
    """Windows [n, w] regrouped into [b, k * w] within the graph's batch / sequence limits.

    Windows are consecutive pieces of one text, so joining k of them is a longer piece of the same
    text: nothing is lost but a remainder of fewer than k windows.
    """
    if not dynamic_dims:
        return tokens
    max_b, max_s = dynamic_dims["batch"][1], dynamic_dims["seq"][1]
    n, w = tokens.shape
    if w > max_s:
        return tokens[: min(n, max_b), :max_s]
    k = min(-(-n // max_b), max(1, max_s // w))  # windows per row
    b = min(max_b, n // k)
    return tokens[: b * k].reshape(b, k * w)


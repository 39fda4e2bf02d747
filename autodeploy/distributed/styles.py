"""tp_plan styles: per module path, how HF's base_model_tp_plan or a recipe's tp_plan wants it split.

Patterns are HF's (`layers.*.mlp.down_proj`: `*` one path segment), matched as a suffix at a dot
boundary of the module path (`model.layers.3.mlp.down_proj`). HF's style names fold into four:

    column      colwise, colwise_rep, colwise_gather_output, local_colwise, packed_colwise
    row         rowwise, rowwise_rep, local_rowwise, packed_rowwise
    replicate   replicate, replicated, replicated_with_grad_allreduce
    other       experts / routers / embeddings / sequence parallel: the transforms decide those
"""

from __future__ import annotations

import re

COLUMN_STYLES = {"colwise", "colwise_rep", "colwise_gather_output", "local_colwise", "packed_colwise"}
ROW_STYLES = {"rowwise", "rowwise_rep", "local_rowwise", "packed_rowwise"}
REPLICATE_STYLES = {"replicate", "replicated", "replicated_with_grad_allreduce"}


class Styles:
    """Per module path, the style the recipe's tp_plan or HF's base_model_tp_plan asks for."""

    def __init__(self, recipe_plan: dict[str, str] | None, hf_plan: dict[str, str] | None):
        self.sources: list[tuple[str, list[tuple[str, re.Pattern, str]]]] = []
        for source, table in (("recipe tp_plan", recipe_plan), ("hf tp_plan", hf_plan)):
            rules = []
            for pattern, style in (table or {}).items():
                regex = re.compile(r"(?:^|\.)" + re.escape(pattern).replace(r"\*", r"[^.]+") + r"$")
                rules.append((pattern, regex, _normalize(style)))
            self.sources.append((source, rules))

    def of(self, path: str) -> tuple[str, str, str] | None:
        """(style, source, pattern) of the first match, recipe first; style in column/row/replicate/other."""
        for source, rules in self.sources:
            for pattern, regex, style in rules:
                if regex.search(path):
                    return style, source, pattern
        return None


def _normalize(style: str) -> str:
    if style in COLUMN_STYLES:
        return "column"
    if style in ROW_STYLES:
        return "row"
    if style in REPLICATE_STYLES:
        return "replicate"
    return "other"  # HF styles for experts / routers / embeddings: the transforms decide those

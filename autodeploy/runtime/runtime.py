"""Runtime: generation through the transformed graph.

This first engine runs greedy / sampled generation without a KV cache: each step feeds the whole
sequence through the graph (input_ids [1, s], position_ids [1, s]) and samples from the last
position. It is the correctness baseline; the paged-KV engine replaces it behind the same API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import fx

from autodeploy.errors import RequestError
from autodeploy.runtime.outputs import RequestOutput
from autodeploy.runtime.sampling import SamplingParams, choose_token

log = logging.getLogger(__name__)

Prompt = str | Sequence[int]


@dataclass
class Runtime:
    graph_module: fx.GraphModule
    tokenizer: Any
    recipe: Any
    source: Any  # autodeploy.models.source.ModelSource
    hf_config: Any
    report: list = field(default_factory=list)  # TransformInfo per transform
    arch: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return torch.device(self.recipe.runtime.device)

    @property
    def max_seq_len(self) -> int:
        return self.recipe.runtime.max_seq_len

    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for holder in (getattr(self.hf_config, "generation_config", None), self.hf_config, self.tokenizer):
            eos = getattr(holder, "eos_token_id", None) if holder is not None else None
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, (list, tuple)):
                ids.update(int(e) for e in eos)
        return ids

    # ---- forward -------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """logits [b, s, vocab] for input_ids [b, s] (positions default to 0..s-1)."""
        input_ids = input_ids.to(self.device)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=self.device).expand_as(input_ids)
        return self.graph_module(input_ids, position_ids.to(self.device))

    # ---- tokenization --------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("this model has no tokenizer: give prompts as lists of token ids")
            return list(self.tokenizer.encode(prompt))
        ids = [int(t) for t in prompt]
        vocab = self.hf_config.get_text_config().vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"token id {bad[0]} is outside the vocabulary (size {vocab})")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise RequestError("this model has no chat template; use generate() with plain prompts")
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return list(ids)

    # ---- generation ----------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Sequence[Prompt], sampling: SamplingParams | None = None) -> list[RequestOutput]:
        """Generate for each prompt (text or token ids). A bad prompt fails alone, with `error` set."""
        sampling = sampling or SamplingParams()
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # a single prompt
        outs = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else None
            try:
                ids = self.encode(prompt)
            except RequestError as e:
                outs.append(RequestOutput(text, [], finish_reason="error", error=str(e)))
                continue
            outs.append(self._generate_one(text, ids, sampling))
        return outs

    def chat(self, messages: list[dict[str, str]], sampling: SamplingParams | None = None) -> RequestOutput:
        """One chat turn: the model's chat template applied to `messages`, then generate."""
        return self.generate([self.apply_chat_template(messages)], sampling)[0]

    def _generate_one(self, text: str | None, prompt_ids: list[int], p: SamplingParams) -> RequestOutput:
        out = RequestOutput(text, prompt_ids, logprobs=[] if p.logprobs else None)
        if not prompt_ids:
            out.finish_reason, out.error = "error", "empty prompt"
            return out
        if len(prompt_ids) >= self.max_seq_len:
            out.finish_reason = "error"
            out.error = f"prompt of {len(prompt_ids)} tokens does not fit max_seq_len {self.max_seq_len}"
            return out
        stop_ids = set(p.stop_token_ids) | (set() if p.ignore_eos else self.eos_token_ids())
        gen = torch.Generator().manual_seed(p.seed) if p.seed is not None else None
        prompt_t = torch.tensor(prompt_ids, dtype=torch.long)
        seq = list(prompt_ids)
        while True:
            logits = self.forward(torch.tensor([seq]))[0, -1].cpu()
            token, logprob = choose_token(logits, p, prompt_t, torch.tensor(out.token_ids, dtype=torch.long), gen)
            seq.append(token)
            out.token_ids.append(token)
            if logprob is not None:
                out.logprobs.append(logprob)
            if token in stop_ids:
                out.finish_reason = "stop"
                break
            if p.stop and self.tokenizer is not None:
                decoded = self.decode(out.token_ids)
                hit = next((s for s in p.stop if s and s in decoded), None)
                if hit is not None:
                    out.text = decoded[: decoded.index(hit)]
                    out.finish_reason = "stop"
                    return out
            if len(out.token_ids) >= p.max_tokens or len(seq) >= self.max_seq_len:
                out.finish_reason = "length"
                break
        out.text = self.decode(out.token_ids)
        return out

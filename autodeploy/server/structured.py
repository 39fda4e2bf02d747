"""Constrained decoding: output forced to parse as JSON and validate against a schema.

    schema ──compile_schema──▶ Grammar ──JSONAutomaton──▶ character-level states
    tokenizer ──VocabIndex (once)──▶ every token's decoded text, in a trie
    state ──walk the trie──▶ {token: next state}  (cached per state, shared by every request)
    each step: logits[t] = -inf unless t leads to a state that can still close within the tokens left

A token is allowed when all its characters are accepted in order, so the text the engine builds is
a prefix of a valid document at every step. Free string content would make every state walk the
whole vocabulary; instead the tokens that are plain string characters (no quote, backslash or
control character) are one precomputed mask that keeps a string-body state unchanged, and only the
few hundred others are walked there.

The budget: from each state, a canonical shortest completion (the automaton's `distance` counts
its characters) is split into tokens greedily, longest first; `tokens_to_finish` is how many. A
token is allowed only if that count from its next state fits the tokens left after it, less one
for the end token, so the value always closes and ends before max_tokens. The end token is
allowed only where the text so far is complete.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from autodeploy.server.json_automaton import S_BODY, JSONAutomaton, State
from autodeploy.server.json_schema import INF, Grammar, UnsupportedSchemaError, compile_schema

log = logging.getLogger(__name__)

Trie = dict  # char -> Trie; the key "" holds the token ids that end at this node


def _plain_string_text(s: str) -> bool:
    return all(c not in '"\\' and c >= " " for c in s)


def token_strings(tokenizer: Any, n: int) -> list[str | None]:
    """Each token's text as it appears inside decoded output; None for tokens that are unusable
    (special, empty, or a partial UTF-8 character). Decoded after an anchor token so SentencePiece
    keeps a word's leading space."""
    anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
    head = tokenizer.decode(anchor, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    texts = tokenizer.batch_decode([anchor + [i] for i in range(n)], skip_special_tokens=True,
                                   clean_up_tokenization_spaces=False)
    out: list[str | None] = []
    for t in texts:
        s = t[len(head):] if t.startswith(head) else None
        out.append(s if s and "\ufffd" not in s else None)
    return out


class VocabIndex:
    """A vocabulary's token texts: a trie of all of them, a trie of those that are not plain string
    content, and the plain-content mask. `width` is the logits' last dimension (>= len(strings))."""

    def __init__(self, strings: Sequence[str | None], width: int | None = None):
        self.strings = list(strings)
        self.width = max(width or 0, len(self.strings))
        self.trie: Trie = {}
        self.special_trie: Trie = {}
        plain = torch.zeros(self.width, dtype=torch.bool)
        for tid, s in enumerate(self.strings):
            if not s:
                continue
            if _plain_string_text(s):
                plain[tid] = True
            else:
                self._insert(self.special_trie, s, tid)
            self._insert(self.trie, s, tid)
        self.plain_string = plain  # [width]
        self.single_chars = {s for s in self.strings if s and len(s) == 1}

    @staticmethod
    def _insert(trie: Trie, s: str, tid: int) -> None:
        node = trie
        for c in s:
            node = node.setdefault(c, {})
        node.setdefault("", []).append(tid)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, width: int | None = None) -> "VocabIndex":
        return cls(token_strings(tokenizer, len(tokenizer)), width)


@dataclass
class _Entry:
    fast: bool  # plain-string tokens keep the state (every branch is inside a string body)
    ids: torch.Tensor  # [k] tokens walked from this state
    dists: torch.Tensor  # [k] distance of the state each one leads to
    trans: dict[int, State]


class TokenMasks:
    """Allowed-token masks of one grammar over one vocabulary, cached per automaton state."""

    def __init__(self, grammar: Grammar, vocab: VocabIndex, eos_ids: Iterable[int], max_states: int = 4096):
        self.automaton = JSONAutomaton(grammar)
        self.vocab = vocab
        self.eos_ids = sorted(int(t) for t in eos_ids if 0 <= int(t) < vocab.width)
        self.max_states = max_states
        self._cache: OrderedDict[State, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._finish: dict[State, int] = {}  # tokens_to_finish memo
        self._next_char: dict[State, tuple[str, State] | None] = {}
        chars = set('{}[]",:0')
        for n in grammar.nodes:
            chars.update(*(key for _, key, _ in n.props), *n.literals)
        self._completion_chars = sorted(chars)  # fixed order: the completion path is deterministic

    @property
    def min_tokens(self) -> int:
        """Tokens of the shortest output the budget rule plans for, the end token included."""
        return self.tokens_to_finish(self.automaton.start()) + 1

    # ---- the budget: tokens that finish the value ---------------------------------------------
    def _completion_step(self, state: State) -> tuple[str, State] | None:
        """The next character of the canonical shortest completion (None: complete). Always the first
        character, in a fixed order, that brings the distance down by one, so the completion from
        the state it leads to is the rest of this one."""
        if state not in self._next_char:
            a = self.automaton
            d, step = a.distance(state), None
            if d > 0:
                step = next(((c, n) for c in self._completion_chars
                             if (n := a.advance(state, c)) and a.distance(n) == d - 1), None)
            self._next_char[state] = step
        return self._next_char[state]

    def tokens_to_finish(self, state: State) -> int:
        """Tokens that spell the canonical shortest completion, longest vocabulary match first.

        The completion from the state after its first greedy token is the rest of the same text,
        tokenized by the rest of the same greedy split: so from any state whose count fits the
        tokens left, the first greedy token keeps it fitting, and the value always closes in time."""
        path, s = [], state
        while s not in self._finish:
            if self.automaton.distance(s) == 0:
                self._finish[s] = 0
                break
            node, best, t = self.vocab.trie, None, s
            while (step := self._completion_step(t)) is not None:
                node = node.get(step[0])
                if node is None:
                    break
                t = step[1]
                if "" in node:
                    best = t
            if best is None:  # no token spells the next character: never finishes
                self._finish[s] = INF
                break
            path.append(s)
            s = best
        v = self._finish[s]
        for p in reversed(path):
            v = min(INF, v + 1)
            self._finish[p] = v
        return self._finish[state]

    def _walk(self, trie: Trie, state: State) -> dict[int, State]:
        out: dict[int, State] = {}
        advance = self.automaton.advance
        todo = [(trie, state)]
        while todo:
            node, st = todo.pop()
            for c, child in node.items():
                if not c:
                    continue
                nxt = advance(st, c)
                if not nxt:
                    continue
                for tid in child.get("", ()):
                    out[tid] = nxt
                if len(child) > 1 or "" not in child:
                    todo.append((child, nxt))
        return out

    def entry(self, state: State) -> _Entry:
        with self._lock:
            e = self._cache.get(state)
            if e is not None:
                self._cache.move_to_end(state)
                return e
        fast = all(stack[-1] == S_BODY for stack in state)
        trans = self._walk(self.vocab.special_trie if fast else self.vocab.trie, state)
        ids = torch.tensor(list(trans), dtype=torch.long)
        dists = torch.tensor([self.tokens_to_finish(s) for s in trans.values()], dtype=torch.long)
        e = _Entry(fast, ids, dists, trans)
        with self._lock:
            self._cache[state] = e
            if len(self._cache) > self.max_states:
                self._cache.popitem(last=False)
        return e

    def allowed(self, state: State, budget: int) -> torch.Tensor:
        """[width] bool: tokens whose next state can still complete within `budget` tokens."""
        e = self.entry(state)
        mask = torch.zeros(self.vocab.width, dtype=torch.bool)
        if e.fast and self.tokens_to_finish(state) <= budget:
            mask |= self.vocab.plain_string
        mask[e.ids[e.dists <= budget]] = True
        if self.automaton.accepting(state) or not mask.any():  # the end; also the way out of a dead state
            mask[self.eos_ids] = True
        return mask

    def next_state(self, state: State, token: int) -> State:
        e = self.entry(state)
        nxt = e.trans.get(token)
        if nxt is not None:
            return nxt
        if e.fast and token < self.vocab.width and bool(self.vocab.plain_string[token]):
            return state
        return frozenset()  # the end token, or a token the mask did not allow: nothing may follow

    def text_state(self, text: str) -> State:
        """The state after `text` (tests and debugging)."""
        st = self.automaton.start()
        for c in text:
            st = self.automaton.advance(st, c)
        return st


class JSONLogitsProcessor:
    """Per request: follows the output token by token and masks the logits to the allowed tokens."""

    def __init__(self, masks: TokenMasks, max_tokens: int):
        self.masks = masks
        self.max_tokens = max_tokens
        self.state = masks.automaton.start()
        self.num_seen = 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        for t in output_ids[self.num_seen:]:
            self.state = self.masks.next_state(self.state, t)
        self.num_seen = len(output_ids)
        left = self.max_tokens - len(output_ids)  # this token included
        mask = self.masks.allowed(self.state, left - 2).to(logits.device)  # - this token - the end token
        v = logits.shape[-1]
        if mask.shape[0] != v:  # logits padded past the tokenizer (or narrower): padding is never allowed
            mask = torch.cat([mask, mask.new_zeros(max(0, v - mask.shape[0]))])[:v]
        return logits.masked_fill_(~mask, float("-inf"))


# ---- what a request asks for --------------------------------------------------------------------
def tool_call_schema(tools: Sequence[dict], parallel: bool) -> dict:
    """The JSON a forced tool call must take: {"name": <tool>, "arguments": <its parameters>}, one
    of the tools; with `parallel`, a non-empty array of such calls."""
    calls = [{"type": "object", "properties": {"name": {"const": t["name"]},
                                               "arguments": t.get("parameters") or {"type": "object"}},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    defs = {}
    for t in tools:  # $defs of each tool's parameters, lifted to the top where $ref resolves them
        defs.update((t.get("parameters") or {}).get("$defs") or {})
    schema = {"type": "array", "items": one, "minItems": 1} if parallel else dict(one)
    if defs:
        schema["$defs"] = defs
    return schema


class StructuredOutputs:
    """Per server: the vocabulary index (built on first use) and compiled grammars by schema."""

    def __init__(self, tokenizer: Any, width: int | None, eos_ids: Iterable[int], max_grammars: int = 64):
        self.tokenizer = tokenizer
        self.width = width
        self.eos_ids = list(eos_ids)
        self._vocab: VocabIndex | None = None
        self._masks: OrderedDict[str, TokenMasks] = OrderedDict()
        self.max_grammars = max_grammars
        self._lock = threading.Lock()

    @property
    def vocab(self) -> VocabIndex:
        with self._lock:
            if self._vocab is None:
                self._vocab = VocabIndex.from_tokenizer(self.tokenizer, self.width)
            return self._vocab

    def masks(self, schema: dict) -> TokenMasks:
        """Compiled once per distinct schema; raises UnsupportedSchemaError."""
        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            m = self._masks.get(key)
            if m is not None:
                self._masks.move_to_end(key)
                return m
        if self.tokenizer is None and self._vocab is None:
            raise UnsupportedSchemaError("structured output needs the model's tokenizer")
        grammar = compile_schema(schema)
        m = TokenMasks(grammar, self.vocab, self.eos_ids)
        with self._lock:
            self._masks[key] = m
            if len(self._masks) > self.max_grammars:
                self._masks.popitem(last=False)
        return m

    def processor(self, schema: dict, max_tokens: int) -> JSONLogitsProcessor:
        m = self.masks(schema)
        if not self.eos_ids:
            raise UnsupportedSchemaError("structured output needs an end-of-sequence token, and this model has none")
        if m.min_tokens >= INF:
            raise UnsupportedSchemaError("the model's vocabulary cannot spell a complete value of this schema")
        if max_tokens < m.min_tokens:
            raise UnsupportedSchemaError(f"max_tokens {max_tokens} is too small for the schema: its shortest "
                                         f"valid output takes {m.min_tokens} tokens")
        return JSONLogitsProcessor(m, max_tokens)

"""A character-level pushdown automaton for JSON that matches a compiled schema (json_schema.py).

A stack is a tuple of frames, the root at the bottom; a state is a frozenset of stacks (anyOf and
"any value" fork at the first character of a value, and all but one branch die soon after).
States are immutable and hashable, so whatever is derived from one (its allowed-token mask) can
be cached and shared by every request on the same schema.

    frame                          phases
    ('R', root, started)           before / after the one top-level value
    ('O', node, phase, j, prefix)  OPEN KEY COLON VSP VAL AFTER CSP KEYQ  (j: property index)
    ('A', node, phase, count)      OPEN AFTER ASP AITEM                   (count: items begun)
    ('S', phase, k)                BODY ESC U                             (k: hex digits of \\uXXXX)
    ('N', node, phase)             SIGN ZERO INT DOT FRAC E ESIGN EXP
    ('L', literals, pos)           the literal texts still matching, characters matched

Numbers and literals that may go on (`12` / `123`) end on the next character their parent takes.
`distance(state)` is the fewest characters that complete the value: the constrained sampler keeps
it within the tokens left, so the output always closes before max_tokens.
"""

from __future__ import annotations

from functools import lru_cache

from autodeploy.server.json_schema import Grammar

State = frozenset

# object phases
OPEN, KEY, COLON, VSP, VAL, AFTER, CSP, KEYQ = range(8)
# array phases (OPEN / AFTER shared)
ASP, AITEM = 2, 3
# string phases
BODY, ESC, U = range(3)
# number phases
SIGN, ZERO, INT, DOT, FRAC, E, ESIGN, EXP = range(8)
NUM_ACCEPT = (ZERO, INT, FRAC, EXP)

S_BODY = ("S", BODY, 0)
HEX = set("0123456789abcdefABCDEF")
DIGITS = set("0123456789")


def _num_next(integer: bool, phase: int, c: str) -> int | None:
    digit = c in DIGITS
    if phase == SIGN:
        return ZERO if c == "0" else INT if digit else None
    if phase in (ZERO, INT):
        if digit:
            return INT if phase == INT else None  # no leading zeros
        if integer:
            return None
        return DOT if c == "." else E if c in "eE" else None
    if phase in (DOT, FRAC):
        if digit:
            return FRAC
        return E if phase == FRAC and c in "eE" else None
    if phase == E:
        return ESIGN if c in "+-" else EXP if digit else None
    if phase in (ESIGN, EXP):
        return EXP if digit else None
    return None


class JSONAutomaton:
    def __init__(self, grammar: Grammar):
        self.g = grammar
        self.nodes = grammar.nodes
        self._allowed: dict[tuple[int, int], tuple[tuple[int, str], ...]] = {}
        self._dist: dict[State, int] = {}
        self.advance = lru_cache(maxsize=1 << 16)(self._advance)

    def start(self) -> State:
        return frozenset({(("R", self.g.root, 0),)})

    # ---- transitions -----------------------------------------------------------------------------
    def _advance(self, state: State, c: str) -> State:
        """The state after one more character (empty: the character is not allowed here)."""
        return frozenset(s for stack in state for s in self._feed(stack, c))

    def allowed_keys(self, nid: int, lo: int) -> tuple[tuple[int, str], ...]:
        """Properties that may come next from index lo: up to and including the first required one."""
        key = (nid, lo)
        if key not in self._allowed:
            n, out = self.nodes[nid], []
            for j in range(lo, len(n.props)):
                out.append((j, n.props[j][1]))
                if n.required[j]:
                    break
            self._allowed[key] = tuple(out)
        return self._allowed[key]

    def _start(self, parent: tuple, nid: int, c: str, seen: frozenset = frozenset()) -> list[tuple]:
        """Stacks after `c` begins a value of node `nid` on top of `parent`."""
        n = self.nodes[nid]
        k = n.kind
        if k == "anyof":
            if nid in seen:  # a cycle of bare references consumes nothing: no value there
                return []
            return [s for o in n.options for s in self._start(parent, o, c, seen | {nid})]
        if k == "object":
            return [parent + (("O", nid, OPEN, 0, ""),)] if c == "{" else []
        if k == "array":
            return [parent + (("A", nid, OPEN, 0),)] if c == "[" else []
        if k == "string":
            return [parent + (S_BODY,)] if c == '"' else []
        if k == "number":
            if c == "-" and not n.nonneg:
                return [parent + (("N", nid, SIGN),)]
            if c in DIGITS:
                return [parent + (("N", nid, ZERO if c == "0" else INT),)]
            return []
        if k == "literal":
            return self._feed(parent + (("L", n.literals, 0),), c)
        raise AssertionError(f"unfinished grammar node {k}")

    def _key_open(self, below: tuple, nid: int, lo: int) -> list[tuple]:
        if self.nodes[nid].free_value is not None:  # any key: a string, then the colon
            return [below + (("O", nid, COLON, -1, ""), S_BODY)]
        return [below + (("O", nid, KEY, lo, ""),)] if self.allowed_keys(nid, lo) else []

    def _feed(self, stack: tuple, c: str) -> list[tuple]:
        top, below = stack[-1], stack[:-1]
        kind = top[0]
        if kind == "S":
            ph = top[1]
            if ph == BODY:
                if c == '"':
                    return [below]
                if c == "\\":
                    return [below + (("S", ESC, 0),)]
                return [] if c < " " else [stack]
            if ph == ESC:
                if c in '"\\/bfnrt':
                    return [below + (S_BODY,)]
                return [below + (("S", U, 0),)] if c == "u" else []
            if c in HEX:
                k = top[2] + 1
                return [below + (S_BODY if k == 4 else ("S", U, k),)]
            return []
        if kind == "N":
            node = self.nodes[top[1]]
            nxt = _num_next(node.integer, top[2], c)
            if nxt is not None:
                return [below + (("N", top[1], nxt),)]
            return self._feed(below, c) if top[2] in NUM_ACCEPT else []
        if kind == "L":
            cands, pos = top[1], top[2]
            nc = tuple(s for s in cands if len(s) > pos and s[pos] == c)
            if nc:
                if all(len(s) == pos + 1 for s in nc):
                    return [below]
                return [below + (("L", nc, pos + 1),)]
            return self._feed(below, c) if any(len(s) == pos for s in cands) else []
        if kind == "R":
            return [] if top[2] else self._start(below + (("R", top[1], 1),), top[1], c)
        if kind == "A":
            return self._feed_array(top, below, c)
        return self._feed_object(top, below, c)

    def _feed_array(self, top: tuple, below: tuple, c: str) -> list[tuple]:
        _, nid, ph, cnt = top
        n = self.nodes[nid]
        if ph == OPEN:
            if c == "]" and n.min_items == 0:
                return [below]
            return self._start(below + (("A", nid, AFTER, 1),), n.item, c)
        if ph == AFTER:
            if c == "," and (n.max_items is None or cnt < n.max_items):
                return [below + (("A", nid, ASP, cnt),)]
            return [below] if c == "]" and cnt >= n.min_items else []
        if ph == ASP and c == " ":
            return [below + (("A", nid, AITEM, cnt),)]
        return self._start(below + (("A", nid, AFTER, cnt + 1),), n.item, c)

    def _feed_object(self, top: tuple, below: tuple, c: str) -> list[tuple]:
        _, nid, ph, j, prefix = top
        n = self.nodes[nid]
        free = n.free_value is not None
        if ph == OPEN:
            if c == "}" and (free or n.close_cost[0][0] == 1):
                return [below]
            return self._key_open(below, nid, 0) if c == '"' else []
        if ph == KEY:
            out = []
            for idx, key in self.allowed_keys(nid, j):
                if c == '"' and key == prefix:
                    out.append(below + (("O", nid, COLON, idx, ""),))
            p = prefix + c
            if any(key.startswith(p) for _, key in self.allowed_keys(nid, j)):
                out.append(below + (("O", nid, KEY, j, p),))
            return out
        if ph == COLON:
            return [below + (("O", nid, VSP, j, ""),)] if c == ":" else []
        if ph in (VSP, VAL):
            if ph == VSP and c == " ":
                return [below + (("O", nid, VAL, j, ""),)]
            value = n.free_value if free else n.props[j][2]
            return self._start(below + (("O", nid, AFTER, j, ""),), value, c)
        if ph == AFTER:
            if c == "," and (free or self.allowed_keys(nid, j + 1)):
                return [below + (("O", nid, CSP, j + 1, ""),)]
            return [below] if c == "}" and (free or n.close_cost[j + 1][1] == 1) else []
        if ph == CSP and c == " ":
            return [below + (("O", nid, KEYQ, j, ""),)]
        return self._key_open(below, nid, j) if c == '"' else []  # CSP / KEYQ

    # ---- acceptance and distance -------------------------------------------------------------------
    def accepting(self, state: State) -> bool:
        """Whether the text so far is one complete value (numbers and literals end here)."""
        for stack in state:
            while stack and ((stack[-1][0] == "N" and stack[-1][2] in NUM_ACCEPT)
                             or (stack[-1][0] == "L" and any(len(s) == stack[-1][2] for s in stack[-1][1]))):
                stack = stack[:-1]
            if len(stack) == 1 and stack[0][2]:
                return True
        return False

    def can_continue(self, state: State) -> bool:
        """Whether any character may follow (False once the top-level value is closed)."""
        return any(not (len(s) == 1 and s[0][2]) for s in state)

    def distance(self, state: State) -> int:
        """Fewest characters that complete the value from `state` (0: complete now)."""
        d = self._dist.get(state)
        if d is None:
            d = self._dist[state] = min((sum(self._rest(f) for f in stack) for stack in state), default=1 << 30)
        return d

    def _rest(self, f: tuple) -> int:
        """Characters this frame still needs once the frames above it are complete."""
        kind, nodes = f[0], self.nodes
        if kind == "S":
            return (1, 2, 5 - f[2])[f[1]]
        if kind == "N":
            return 0 if f[2] in NUM_ACCEPT else 1
        if kind == "L":
            return min(len(s) for s in f[1]) - f[2]
        if kind == "R":
            return 0 if f[2] else nodes[f[1]].min_len
        n = nodes[f[1]]
        if kind == "A":
            ph, cnt, lo, ml = f[2], f[3], n.min_items, nodes[n.item].min_len
            if ph == OPEN:
                return 1 if lo == 0 else lo * ml + lo
            if ph == AFTER:
                return 1 if cnt >= lo else (lo - cnt) * (1 + ml) + 1
            return ml + max(0, lo - cnt - 1) * (1 + ml) + 1
        ph, j = f[2], f[3]
        if n.free_value is not None:
            mv = nodes[n.free_value].min_len
            return {OPEN: 1, COLON: 2 + mv, VSP: 1 + mv, VAL: 1 + mv, AFTER: 1}.get(ph, 4 + mv)
        cc = n.close_cost
        if ph == OPEN:
            return cc[0][0]
        if ph == COLON:
            return 1 + nodes[n.props[j][2]].min_len + cc[j + 1][1]
        if ph in (VSP, VAL):
            return nodes[n.props[j][2]].min_len + cc[j + 1][1]
        if ph == AFTER:
            return cc[j + 1][1]
        if ph == KEY:
            prefix = f[4]
            return min(len(key) - len(prefix) + 2 + nodes[n.props[i][2]].min_len + cc[i + 1][1]
                       for i, key in self.allowed_keys(f[1], j) if key.startswith(prefix))
        return min(len(key) + 3 + nodes[n.props[i][2]].min_len + cc[i + 1][1]  # CSP / KEYQ
                   for i, key in self.allowed_keys(f[1], j))

"""The JSON-schema token-mask automaton on a small fake vocabulary: every output sampled under the
mask, from random logits with random budgets down to the tightest, ends with the end token inside
max_tokens, parses, and validates against its schema."""

from __future__ import annotations

import json
import random
import string

import jsonschema
import pytest
import torch

from autodeploy.server.json_automaton import JSONAutomaton
from autodeploy.server.json_schema import UnsupportedSchemaError, compile_schema
from autodeploy.server.structured import JSONLogitsProcessor, StructuredOutputs, TokenMasks, VocabIndex, tool_call_schema

EOS = 0
# one-character tokens for printable ASCII, multi-character ones that cross JSON structure, and a
# few unusable ids (None: special / partial UTF-8)
MULTI = ['{"', '":', '": ', '", "', '","', '"}', '"}}', '"]', '"],', '}]', '}}', '},{', ', "', 'city', 'Paris',
         'name', 'true', 'false', 'null', 'nul', 'tr', '12', '3.5', 'e+1', '-0', '00', '\\n', '\\u00e9', '\\"',
         'a"b', 'x\n', '\t', 'caf\u00e9', '[{', '[]', '{}', ' {', '\n', 'unit', 'celsius', '"c', 'arguments',
         '{"name": "', 'get_weather', '", "arguments": {', 'ity": "', '"items": [', '1,', '],"']
STRINGS = [None] + list(string.printable[:95]) + MULTI + [None, None]
WIDTH = len(STRINGS) + 3  # logits wider than the tokenizer: padding is never allowed


@pytest.fixture(scope="module")
def vocab():
    return VocabIndex(STRINGS, WIDTH)


SCHEMAS = [
    {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]},
                                      "days": {"type": "integer", "minimum": 0}, "t": {"type": "number"},
                                      "ok": {"type": "boolean"}},
     "required": ["city", "unit"], "additionalProperties": False},
    {"type": "object"},  # json_object: any object
    {"type": "array", "items": {"type": "object", "properties": {"a": {"type": ["integer", "null"]}},
                                "required": ["a"]}, "minItems": 2, "maxItems": 3},
    {"$defs": {"T": {"type": "object", "properties": {"v": {"type": "integer"},
                                                       "kids": {"type": "array", "items": {"$ref": "#/$defs/T"}}},
                     "required": ["v", "kids"]}}, "$ref": "#/$defs/T"},
    {"enum": [1, 12, 123, "x", None, {"k": [1]}]},
    {"type": "object", "properties": {"nested": {"type": "object", "properties": {"deep": {
        "type": "array", "items": {"type": "string"}}}, "required": ["deep"]}, "opt": {"const": "c"}},
     "required": ["nested"]},
    {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "number"}]},
                                      "q\"uote": {"type": "boolean"}}, "required": ["q\"uote", "x"]},
    tool_call_schema([{"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}, {"name": "noop"}], parallel=True),
]


def sample(masks: TokenMasks, max_tokens: int, rng: torch.Generator, temperature: float) -> tuple[list[int], str]:
    proc = JSONLogitsProcessor(masks, max_tokens)
    out: list[int] = []
    while len(out) < max_tokens:
        logits = proc(out, torch.randn(WIDTH, generator=rng) * 4)
        assert torch.isfinite(logits).any(), "the mask left no token"
        assert not torch.isfinite(logits[len(STRINGS):]).any(), "padding ids allowed"
        t = int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=rng))
        out.append(t)
        if t == EOS:
            break
    assert out[-1] == EOS, f"no end token within max_tokens={max_tokens}"
    return out, "".join(STRINGS[t] for t in out[:-1])


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: json.dumps(s)[:40])
def test_every_sampled_output_parses_and_validates(vocab, schema):
    masks = TokenMasks(compile_schema(schema), vocab, [EOS])
    rng = torch.Generator().manual_seed(0)
    lo = masks.min_tokens
    for trial in range(40):
        max_tokens = lo if trial % 4 == 0 else lo + int(torch.randint(0, 40, (1,), generator=rng))
        ids, text = sample(masks, max_tokens, rng, temperature=[0.5, 1.0, 3.0][trial % 3])
        value = json.loads(text)
        jsonschema.validate(value, schema)
        assert masks.automaton.accepting(masks.text_state(text))


def test_multi_character_tokens_cross_structure(vocab):
    schema = SCHEMAS[0]
    masks = TokenMasks(compile_schema(schema), vocab, [EOS])
    allowed = masks.allowed(masks.text_state('{"city":"Par'), 100)
    ok = {STRINGS[i] for i in range(len(STRINGS)) if allowed[i]}
    # inside the string: plain text, escapes, and a quote that goes on to the next key
    assert {"a", "Paris", "caf\u00e9", "\\n", "\\u00e9", '\\"', '", "', '","', '"'} <= ok
    # not: closing the object before the required "unit", a raw newline, a bad escape
    assert not {'"}', '"]', "x\n", "\n", "\t", "a\"b"} & ok
    assert EOS not in torch.nonzero(allowed).flatten().tolist()


def test_budget_forces_the_value_to_close(vocab):
    masks = TokenMasks(compile_schema({"type": "array", "items": {"type": "integer"}}), vocab, [EOS])
    st = masks.text_state("[1")
    assert masks.automaton.distance(st) == 1
    tight = masks.allowed(st, 0)  # the value must be complete after this token
    assert {STRINGS[i] for i in torch.nonzero(tight).flatten().tolist()} == {"]"}
    one_more = masks.allowed(st, 1)  # a digit may still come: "[12" is one character from done
    assert {"2", "]", "12"} <= {STRINGS[i] for i in torch.nonzero(one_more).flatten().tolist()}
    assert not one_more[STRINGS.index(",")]  # "[1," needs an item and "]": two more characters
    roomy = masks.allowed(st, 5)
    assert {"2", "12", ",", "]", "}]"} & {STRINGS[i] for i in torch.nonzero(roomy).flatten().tolist()} == {
        "2", "12", ",", "]"}
    done = masks.allowed(masks.text_state("[1]"), 5)
    assert torch.nonzero(done).flatten().tolist() == [EOS]


def test_distance_always_has_a_one_character_step():
    """Exhaustive over a small alphabet: from every reachable state with distance d > 0 some
    character leads to distance d - 1, which is what makes the budget rule complete."""
    alphabet = list('{}[]",: -.019eE+\\_' + string.ascii_lowercase)
    for schema in SCHEMAS:
        a = JSONAutomaton(compile_schema(schema))
        frontier, seen = [a.start()], set()
        while frontier and len(seen) < 3000:
            st = frontier.pop()
            if st in seen:
                continue
            seen.add(st)
            d = a.distance(st)
            nexts = [n for c in alphabet if (n := a.advance(st, c))]
            if d > 0:
                assert any(a.distance(n) == d - 1 for n in nexts), (schema, d)
            else:
                assert a.accepting(st)
            frontier.extend(nexts)


def test_random_character_walks_validate():
    rng = random.Random(0)
    alphabet = list('{}[]",: -.0123456789eE+abcdefghijklmnopqrstuvwxyz_\\/') + ['"'] * 4
    for schema in SCHEMAS:
        a = JSONAutomaton(compile_schema(schema))
        for _ in range(100):
            st, text = a.start(), ""
            budget = a.distance(st) + rng.randint(0, 30)
            while True:
                left = budget - len(text)
                opts = [(c, n) for c in set(alphabet) if (n := a.advance(st, c)) and a.distance(n) <= left - 1]
                if a.accepting(st) and (not opts or rng.random() < 0.2):
                    break
                c, st = rng.choice(opts)
                text += c
            jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("schema, words", [
    ({"type": "string", "pattern": "^a+$"}, "'pattern'"),
    ({"type": "string", "maxLength": 3}, "'maxLength'"),
    ({"type": "integer", "maximum": 3}, "'maximum'"),
    ({"type": "integer", "minimum": 3}, "'minimum' other than 0"),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "'oneOf'"),
    ({"type": "object", "properties": {"a": {"not": {}}}}, "$.properties.a: 'not'"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "'uniqueItems'"),
    ({"$ref": "https://example.com/s.json"}, "only local"),
    ({"$ref": "#/$defs/missing"}, "does not resolve"),
    ({"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"}, "no finite JSON value"),
    ({"type": "object", "properties": {}, "required": ["a"], "additionalProperties": False}, "not in properties"),
    ({"type": "wat"}, "unknown type"),
])
def test_unsupported_schemas_name_the_keyword(schema, words):
    with pytest.raises(UnsupportedSchemaError) as e:
        compile_schema(schema)
    assert words in str(e.value)


def test_max_tokens_below_the_shortest_output_is_refused(vocab):
    so = StructuredOutputs(None, WIDTH, [EOS])
    so._vocab = vocab
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    need = so.masks(schema).min_tokens
    assert need == len(['{"', "city", '":', '"', '"}']) + 1  # the shortest text, longest tokens first, + end
    so.processor(schema, need)
    with pytest.raises(UnsupportedSchemaError, match=f"max_tokens {need - 1} is too small.*{need} tokens"):
        so.processor(schema, need - 1)
    assert so.masks(dict(schema)) is so.masks(schema)  # compiled once per schema


def test_token_strings_of_a_byte_level_tokenizer_concatenate_to_the_decoded_text():
    from autodeploy.server.structured import token_strings
    from tests.server.tiny_chat_model import build_tokenizer

    tok = build_tokenizer()
    strings = token_strings(tok, len(tok))
    assert strings[tok.eos_token_id] is None and strings[tok.encode("a")[0]] == "a"
    text = '{"city": "Paris", "t": [1.5e3, true]}'
    ids = tok.encode(text)
    assert "".join(strings[i] for i in ids) == tok.decode(ids) == text
    # a character split over byte tokens: each half alone is unusable (the mask never offers it)
    assert [strings[i] for i in tok.encode("é")] == [None, None]

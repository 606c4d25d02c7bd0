"""The grammar both generation backends constrain an answer to (`answer/backends.py`).

No free whitespace, and the separators of `core.references.render_wire` (the training targets).
With any whitespace allowed, a weak model can emit blank lines or tabs until max_tokens: v9 did on
vLLM, whose `response_format` `json_schema` allows it (320 tokens of tabs, eval run
20261130T062900-294a1d). vLLM's own `disable_any_whitespace` switch is no fix: it also forces
"," and ":" without the spaces every training target has. vLLM's `guided_json` field is silently
ignored, so vLLM gets the grammar itself, as xgrammar EBNF (`structured_outputs.grammar`); the
local backend compiles the same schema with the same settings.

The grammar leaves out the schema's `maxLength` bounds (`decoding_schema`). xgrammar spells a
string of at most 600 characters as 600 nested optional characters and precomputes a token mask
for each: compiling one answered-shape grammar took 1,846 ms on one thread, against 12 ms without
the bound (measured 2026-12-07, SmolLM2's 49k-token vocabulary). vLLM caches compiled grammars
by text, but each (decided status, sentence count) shape is a grammar of its own, and each new one
was compiled before its request could decode a token: the gold eval (362 items) took 8 min 50 s
with the bound and 7 min 21 s without, with the same outputs (README, issue 16). The bound still
holds: the generation stops at `answer_max_tokens`, and the service cuts an over-long answer text at a word
boundary (`core.references.parse_wire_answer(cuts=...)`, recorded as a repair). An output that the
token limit stops inside its answer text (a model repeating itself; with the bound the grammar
closed the string at 600 characters) is closed there, at its last whole word, in the same way.
"""

from __future__ import annotations

import json
from typing import Any

JSON_GRAMMAR = {"any_whitespace": False, "separators": (", ", ": ")}
UNBOUNDED_KEYWORDS = ("maxLength",)


def decoding_schema(schema: Any) -> Any:
    """`schema` without the keywords the decoding grammar leaves out (module docstring)."""
    if isinstance(schema, dict):
        return {k: decoding_schema(v) for k, v in schema.items() if k not in UNBOUNDED_KEYWORDS}
    if isinstance(schema, list):
        return [decoding_schema(v) for v in schema]
    return schema


def decoding_schema_text(schema: dict) -> str:
    """`decoding_schema(schema)` as the JSON text xgrammar compiles."""
    return json.dumps(decoding_schema(schema))


def house_grammar(schema: dict) -> str:
    """`schema` as xgrammar EBNF under JSON_GRAMMAR (what `LocalBackend` compiles too)."""
    import xgrammar

    return str(xgrammar.Grammar.from_json_schema(decoding_schema_text(schema), **JSON_GRAMMAR))

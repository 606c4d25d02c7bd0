"""The grammar both generation backends constrain an answer to (`answer/backends.py`).

No free whitespace, and the separators of `core.references.render_wire` (the training targets).
With any whitespace allowed, a weak model can emit blank lines or tabs until max_tokens: v9 did on
vLLM, whose `response_format` `json_schema` allows it (320 tokens of tabs, eval run
20261130T062900-294a1d). vLLM's own `disable_any_whitespace` switch is no fix: it also forces
"," and ":" without the spaces every training target has. vLLM's `guided_json` field is silently
ignored, so vLLM gets the grammar itself, as xgrammar EBNF (`structured_outputs.grammar`); the
local backend compiles the same schema with the same settings.
"""

from __future__ import annotations

import json

JSON_GRAMMAR = {"any_whitespace": False, "separators": (", ", ": ")}


def house_grammar(schema: dict) -> str:
    """`schema` as xgrammar EBNF under JSON_GRAMMAR (what `LocalBackend` compiles too)."""
    import xgrammar

    return str(xgrammar.Grammar.from_json_schema(json.dumps(schema), **JSON_GRAMMAR))

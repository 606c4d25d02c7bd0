"""Training pairs -> token ids with the loss on the response only (batches: tuning.batching)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from core.contract import validate_answer
from core.prompt import build_messages
from core.references import render_wire, wire_from_house
from tuning.batching import IGNORE, Example
from tuning.pairs import TrainingPair
from tuning.status import STATUS_PREFIX


def prompt_text(tokenizer, instruction: str, context: Sequence) -> str:
    """The exact text the model sees before its answer (shared with generation)."""
    return tokenizer.apply_chat_template(build_messages(instruction, context), tokenize=False, add_generation_prompt=True)


def wire_target(pair: TrainingPair) -> str:
    """What the model is trained to write for a pair: its house answer in the wire format, the
    quotes turned into the ids of the sentences they cover in this context."""
    return render_wire(wire_from_house(validate_answer(json.loads(pair.response)), pair.context))


def encode_pair(tokenizer, pair: TrainingPair) -> Example:
    messages = build_messages(pair.instruction, pair.context)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": wire_target(pair)}], tokenize=False
    )
    if not full.startswith(prompt):  # a template that rewrites earlier turns cannot be trained this way
        raise ValueError(f"chat template of {tokenizer.name_or_path} does not extend the prompt")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full[len(prompt):].rstrip("\n"), add_special_tokens=False)["input_ids"]
    return Example(pair.id, prompt_ids + response_ids, [IGNORE] * len(prompt_ids) + response_ids, pair.status,
                   status_token_index(tokenizer, response_ids))


def status_token_index(tokenizer, response_ids: Sequence[int]) -> int:
    """Which response token holds the first character of the status value (the answer begins
    `{"status": "`), found by decoding, since a tokenizer may merge the quote into the value's
    first token; -1 when the response does not begin that way."""
    if not tokenizer.decode(response_ids).startswith(STATUS_PREFIX):
        return -1
    for index in range(len(response_ids)):
        if len(tokenizer.decode(response_ids[:index + 1])) > len(STATUS_PREFIX):
            return index
    return -1

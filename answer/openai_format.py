"""Answers as chat messages and OpenAI chat-completion objects (plain chat clients, the OpenAI SDK)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from answer.pipeline import AnswerResult

REFUSAL_TEXT = {
    "no_authorized_source": "I can't answer that: none of the policies you have access to covers it.",
    "not_in_policy": "The policies you have access to cover this subject but do not state this point.",
    "out_of_scope": "That isn't a question about company policy, so I can't answer it here.",
}


def message_text(result: AnswerResult) -> str:
    """The answer as a chat message: the text, then numbered sources (for plain chat clients)."""
    answer = result.answer
    if answer.status == "refused":
        text = REFUSAL_TEXT.get(answer.reason, "I can't answer that.")
    elif answer.status == "escalate":
        text = f"{answer.answer}\n\nThis needs a person: please contact the team named above."
    else:
        text = answer.answer or ""
    if result.citations:
        lines = [f"[{n}] {c.label} ({c.id}): \"{c.quote}\"" for n, c in enumerate(result.citations, 1)]
        text += "\n\nSources:\n" + "\n".join(lines)
    return text


def model_name(result: AnswerResult) -> str:
    return f"policyrag/{result.versions.get('adapter') or 'base'}"


def usage(result: AnswerResult) -> dict[str, int]:
    p, c = result.usage["prompt_tokens"], result.usage["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion(result: AnswerResult, created: int) -> dict[str, Any]:
    extra = result.to_json()
    return {
        "id": f"chatcmpl-{result.request_id}",
        "object": "chat.completion",
        "created": created,
        "model": model_name(result),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": message_text(result), "policyrag": extra}}],
        "usage": usage(result),
        "policyrag": extra,
    }


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def pieces(text: str, size: int = 24) -> Iterator[str]:
    words = text.split(" ")
    for start in range(0, len(words), size):
        piece = " ".join(words[start:start + size])
        yield piece if start == 0 else " " + piece

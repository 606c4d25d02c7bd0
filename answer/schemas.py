"""Request and response models of the answer service (they make the OpenAPI docs at /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from answer.errors import InvalidRequest

HARD_MAX_QUESTION = 32_000  # schema bound; the configured limit (max_question_chars) is checked too


class HrAnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=HARD_MAX_QUESTION, examples=["How many days of annual leave can I carry over?"])
    conversation_id: str | None = Field(None, max_length=64, description="continue a conversation (follow-ups)")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(min_length=1, max_length=HARD_MAX_QUESTION)
    conversation_id: str | None = Field(None, max_length=64, description="omit to start a conversation")


class CitationOut(BaseModel):
    id: str
    quote: str
    doc_id: str
    title: str
    version: str
    section: list[str]
    label: str
    link: str
    passage: str


class AnswerOut(BaseModel):
    request_id: str
    conversation_id: str | None
    status: Literal["answered", "refused", "escalate"]
    answer: str | None
    reason: str | None
    citations: list[CitationOut]
    query: str = Field(description="the stand-alone query used for retrieval")
    versions: dict[str, Any]
    latency_ms: dict[str, float]
    usage: dict[str, int]
    repaired: bool = Field(description="the model's citations needed repair before being shown")


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            texts = [part.get("text") or "" for part in self.content if part.get("type") == "text"]
            if not all(isinstance(t, str) for t in texts):
                raise InvalidRequest("a message content part of type 'text' needs a string 'text'")
            return " ".join(texts)
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send many optional fields
    model: str | None = "policyrag"
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

"""The answer endpoints: the HR assistant (one JSON answer), the compliance chat (server-sent
events), an OpenAI-compatible chat completion, the model list and who-am-I.

Handlers are plain `def`s: FastAPI runs them in its thread pool, and the answer pipeline is
synchronous (retrieval is a few ms; generation waits on the model server).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from answer.deps import PrincipalDep, RequestIdDep, ServiceDep
from answer.errors import InvalidRequest
from answer.openai_format import (
    completion,
    message_text,
    model_name,
    pieces,
    sse,
    usage,
)
from answer.pipeline import AnswerResult
from answer.schemas import (
    AnswerOut,
    ChatCompletionRequest,
    ChatRequest,
    HrAnswerRequest,
)
from answer.service import check_unicode
from core.errors import PolicyRagError

logger = logging.getLogger(__name__)

router = APIRouter()


def _noted(request: Request, result: AnswerResult) -> AnswerResult:
    """Name the adapter that answered in the request log."""
    request.state.adapter = result.versions.get("adapter") or "base"
    return result


@router.post("/v1/hr/answer", response_model=AnswerOut, tags=["answers"],
             summary="One question → one cited house-format answer (the HR assistant endpoint)")
def hr_answer(body: HrAnswerRequest, who: PrincipalDep, service: ServiceDep, request: Request,
              request_id: RequestIdDep) -> dict:
    """One question, one cited answer in the house format."""
    question = service.checked_question(body.question)
    history: list[str] = []
    conversation_id = body.conversation_id
    with service.answer_slot(who):
        if conversation_id is not None:
            conversation_id, history = service.history(who, conversation_id)
        result = service.answer(who, question, history=history, conversation_id=conversation_id,
                                endpoint="/v1/hr/answer", request_id=request_id)
    return _noted(request, result).to_json()


@router.post("/v1/chat", tags=["answers"], summary="Compliance chat: multi-turn, streamed as server-sent events",
             response_description="text/event-stream: `meta`, `token` (draft model output, not for display), "
                                  "`answer` (the verified answer: render this), `error`, `done`")
def chat(body: ChatRequest, who: PrincipalDep, service: ServiceDep, request: Request,
         request_id: RequestIdDep) -> StreamingResponse:
    """One chat turn, streamed; the verified answer arrives as the `answer` event."""
    question = service.checked_question(body.message)
    # the slot first: a request refused with 429 creates no conversation
    release = service.take_slot(who)
    try:
        conversation_id, history = service.history(who, body.conversation_id)
    except BaseException:
        release()
        raise
    events: queue.Queue = queue.Queue()

    def work() -> None:
        # the answer runs to its end in this thread whether or not the client still listens,
        # and the slot is released here, never held by the stream
        try:
            result = service.answer(who, question, history=history, conversation_id=conversation_id,
                                    endpoint="/v1/chat", request_id=request_id,
                                    on_event=lambda kind, data: events.put((kind, data)))
            events.put(("answer", _noted(request, result).to_json()))
        except PolicyRagError as exc:
            events.put(("error", {"code": exc.code, "message": str(exc)}))
        except Exception as exc:  # the stream has started: report, do not hang
            logger.exception("chat answer failed")
            events.put(("error", {"code": "internal_error", "message": f"internal error ({type(exc).__name__})"}))
        finally:
            release()
            events.put(("done", {}))

    threading.Thread(target=work, name="chat-answer", daemon=True).start()

    def stream() -> Iterator[str]:
        while True:
            kind, data = events.get()
            payload = data if kind != "token" else {"text": data}
            yield f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"
            if kind == "done":
                return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/chat/completions", tags=["openai"],
             summary="OpenAI-compatible chat completions (streaming and not); citations in the text and in `policyrag`")
def chat_completions(body: ChatCompletionRequest, who: PrincipalDep, service: ServiceDep, request: Request,
                     request_id: RequestIdDep):
    """The OpenAI chat-completions shape, for clients built on the OpenAI SDK."""
    users = [m.text() for m in body.messages if m.role == "user"]
    if not users or body.messages[-1].role != "user":
        raise InvalidRequest("the last message must be a user message with the question")
    question = service.checked_question(users[-1])
    # earlier user turns are the conversation, held to the same limits as the question
    history = [service.checked_question(turn) for turn in users[:-1] if check_unicode(turn).strip()]
    created = int(time.time())
    if not body.stream:
        with service.answer_slot(who):
            result = service.answer(who, question, history=history, endpoint="/v1/chat/completions",
                                    request_id=request_id)
        return completion(_noted(request, result), created)
    service.check_capacity(who)  # 429 before the stream starts; the slot itself is taken inside it

    def stream() -> Iterator[str]:
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        # the slot is held only while the answer is made, never across a yield: a client that
        # drops the stream (even before its first byte) cannot keep it
        try:
            with service.answer_slot(who):
                result = service.answer(who, question, history=history, endpoint="/v1/chat/completions",
                                        request_id=request_id)
        except PolicyRagError as exc:
            yield sse({"error": {"code": exc.code, "message": str(exc), "type": "server_error"}})
            yield "data: [DONE]\n\n"
            return
        yield sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": "policyrag",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        _noted(request, result)
        text = message_text(result)
        # only verified text is streamed: the answer is checked before its first word is sent
        for piece in pieces(text):
            yield sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                       "model": model_name(result),
                       "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        final = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model_name(result),
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "policyrag": result.to_json()}
        yield sse(final)
        if (body.stream_options or {}).get("include_usage"):
            yield sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                       "model": model_name(result), "choices": [], "usage": usage(result)})
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/v1/models", tags=["openai"], summary="OpenAI-compatible model list")
def models(who: PrincipalDep) -> dict:
    """The one model this endpoint serves."""
    return {"object": "list", "data": [{"id": "policyrag", "object": "model", "created": 0, "owned_by": "policyrag"}]}


@router.get("/v1/me", tags=["answers"], summary="Who the credential belongs to (user, groups, region)")
def me(who: PrincipalDep) -> dict:
    """The asking user as the service sees them."""
    return {"user": who.user_id, "groups": list(who.groups), "region": who.region}

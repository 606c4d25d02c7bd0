"""The answer pipeline, shared by every endpoint and by `policyrag ask`:

    principal → (rewrite a follow-up) → retrieve with the one ACL path → no passage above the
    floor? refuse without calling the model → number the passages' sentences → generate (promoted
    adapter, constrained to the wire schema whose citation ids are this prompt's sentence ids) →
    validate → turn sentence ids into verbatim quotes (`core.references`) → verify every citation
    against the passages retrieved for this principal → repair (drop bad citations; none left →
    refuse) → resolve citations → audit → result.

Nothing the model writes reaches a caller unverified: the result's answer is the repaired one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from answer.audit import AuditLog, AuditRecord
from answer.backends import AdapterRef, AdapterUnavailable, Backend, Generation
from core.contract import (
    MAX_ANSWER_CHARS,
    Answered,
    AnswerFormatError,
    Escalated,
    Refused,
    refusal,
    render_answer,
)
from core.prompt import build_messages, number_sentences
from core.provision import BaseModelIdentity
from core.references import (
    parse_wire_answer,
    prompt_fingerprint,
    resolve_wire_answer,
    wire_json_schema,
)
from core.settings import Settings
from core.verify import repair_answer
from retrieval.acl import Principal
from retrieval.retriever import Passage, Retriever
from tuning.registry import AdapterManifest, AdapterRegistry, RegistryError
from tuning.status import (
    DECIDER_FILE,
    FEATURES,
    StatusDecider,
    SupportScorer,
    status_logprobs,
)

logger = logging.getLogger(__name__)

HouseAnswer = Answered | Refused | Escalated
EventCallback = Callable[[str, Any], None]

# a question that leans on an earlier turn: pronouns and elliptic openers
_FOLLOW_UP = re.compile(
    r"\b(it|its|that|this|these|those|they|them|their|there|same|above|one)\b"
    r"|^(and|also|what about|how about|and if|what if|but|or|so)\b",
    re.IGNORECASE,
)


def is_follow_up(question: str) -> bool:
    """A short question (≤ 6 words) or one that leans on an earlier turn ("what about
    contractors?", "does that apply in Germany?")."""
    return len(question.split()) <= 6 or bool(_FOLLOW_UP.search(question))


def rewrite_follow_up(question: str, previous: Sequence[str]) -> str:
    """A stand-alone query for retrieval (and for the model) from a follow-up question.

    `previous` are the conversation's earlier *raw* questions, oldest first (never earlier
    rewrites: a rewrite built on rewrites grew with every turn, 239,530 characters by turn 120).
    A follow-up is joined to the last question that stood alone and, if there was one since, the
    latest follow-up: at most three raw questions, so the query is bounded by construction.

    Rule-based on purpose: the 135M model cannot rewrite reliably, and a rule is predictable and
    auditable."""
    question = " ".join(question.split())
    previous = [" ".join(p.split()) for p in previous if p.strip()]
    if not previous or not is_follow_up(question):
        return question
    anchor = max((i for i, p in enumerate(previous) if not is_follow_up(p)), default=0)
    since = previous[anchor + 1:][-1:]
    return " Follow-up: ".join([previous[anchor], *since, question])


@dataclass(frozen=True)
class ResolvedCitation:
    id: str
    quote: str
    doc_id: str
    title: str
    version: str
    section: tuple[str, ...]
    label: str
    link: str
    passage: str  # the cited passage's text (retrieved for this user, so theirs to see)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "quote": self.quote, "doc_id": self.doc_id, "title": self.title,
                "version": self.version, "section": list(self.section), "label": self.label,
                "link": self.link, "passage": self.passage}


@dataclass
class AnswerResult:
    request_id: str
    conversation_id: str | None
    user: str
    question: str
    query: str
    answer: HouseAnswer
    citations: list[ResolvedCitation]
    passages: list[Passage]
    versions: dict[str, Any]
    latency_ms: dict[str, float]
    usage: dict[str, int]
    repairs: list[str] = field(default_factory=list)
    model_called: bool = True
    raw_text: str | None = None  # the model's output before validation and repair (eval only)
    schema_valid: bool | None = None  # raw output parsed as a house answer
    raw_citations: int = 0  # citations in the raw answer
    raw_valid_citations: int = 0  # of those, how many verified
    status_decision: dict[str, Any] | None = None  # the status decider's inputs and choice (eval only)

    @property
    def status(self) -> str:
        return self.answer.status

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "conversation_id": self.conversation_id,
            "status": self.answer.status,
            "answer": self.answer.answer,
            "reason": self.answer.reason,
            "citations": [c.to_json() for c in self.citations],
            "query": self.query,
            "versions": self.versions,
            "latency_ms": self.latency_ms,
            "usage": self.usage,
            "repaired": bool(self.repairs),
        }


class AnswerPipeline:
    def __init__(self, settings: Settings, retriever: Retriever, backend: Backend,
                 registry: AdapterRegistry | None = None, audit: AuditLog | None = None,
                 *, base_model: BaseModelIdentity | None = None) -> None:
        self.settings = settings
        self.retriever = retriever
        self.backend = backend
        self.registry = registry or AdapterRegistry(settings.adapters_dir)
        self.audit = audit or AuditLog.from_settings(settings)
        self.base_model = base_model  # None: adapters are not checked against the served model (tests)
        self._verified: dict[str, AdapterRef] = {}
        self._deciders: dict[str, StatusDecider | None] = {}
        self.support = SupportScorer(retriever.embedder)
        self._retrieval_lock = threading.Lock()
        self.fingerprint = prompt_fingerprint()

    # -- adapter ------------------------------------------------------------------------------

    def current_adapter(self, version: str = "promoted") -> AdapterRef | None:
        """The promoted adapter, read from the registry on every call (so promote and rollback
        apply to the next request); its integrity is checked once per version. `version` "base"
        means no adapter; "vN" a specific one (eval)."""
        if version == "base":
            return None
        if version == "promoted":
            try:
                version = self.registry.promoted_version()
            except (OSError, ValueError) as exc:
                raise AdapterUnavailable(f"the adapter registry cannot be read ({exc})") from None
        if version is None:
            return None
        ref = self._verified.get(version)
        if ref is None:
            try:
                record = self.registry.load(version)
            except RegistryError as exc:
                raise AdapterUnavailable(f"the promoted adapter cannot be used: {exc}") from None
            self._check_compatible(record.version, record.manifest)
            self._deciders[version] = self._load_decider(record.version, record.path, record.manifest)
            ref = self._verified[version] = AdapterRef(version, record.path, dict(record.manifest.files))
        return ref

    def _load_decider(self, version: str, path, manifest: AdapterManifest) -> StatusDecider | None:
        """The adapter's status decider when it was registered with one (`registry.load` has
        checked its hash with the adapter's other files)."""
        if DECIDER_FILE not in manifest.files:
            return None
        try:
            return StatusDecider.load(path)
        except (OSError, ValueError, KeyError) as exc:
            raise AdapterUnavailable(f"the status decider of adapter {version} cannot be used: {exc}") from None

    def _decide_status(self, query: str, passages: Sequence[Passage], messages, adapter: AdapterRef | None):
        """The status chosen before generation (tuning/status.py), or None: no adapter, an
        adapter without a decider, or the decider switched off."""
        decider = self._deciders.get(adapter.version) if adapter is not None else None
        if decider is None or not self.settings.status_decider:
            return None, None
        with self._retrieval_lock:  # the embedder is used one call at a time
            support = self.support.features(query, passages)
        features = status_logprobs(self.backend.status_top_logprobs(messages, adapter)) + support
        status = decider.decide(features)
        return status, {"status": status, "scores": {k: round(v, 4) for k, v in decider.scores(features).items()},
                        "features": dict(zip(FEATURES, (round(f, 4) for f in features)))}

    def _check_compatible(self, version: str, manifest: AdapterManifest) -> None:
        problem = manifest.incompatibility(self.base_model, self.fingerprint)
        if problem:
            raise AdapterUnavailable(f"adapter {version} {problem}; roll back or retrain it")

    def store_count(self) -> int:
        """Passages in the store (readiness), under the same lock as retrieval."""
        with self._retrieval_lock:
            return self.retriever.store.count()

    # -- answering ----------------------------------------------------------------------------

    def answer(self, principal: Principal, question: str, *, history: Sequence[str] = (),
               conversation_id: str | None = None, endpoint: str = "ask",
               on_event: EventCallback | None = None, adapter_version: str = "promoted",
               constrained: bool = True, request_id: str | None = None) -> AnswerResult:
        emit = on_event or (lambda kind, data: None)
        request_id = request_id or uuid.uuid4().hex  # the service passes its request log's id
        started = time.perf_counter()
        question = " ".join(question.split())
        # bounded by construction (≤ 3 raw questions); the cap guards callers that pass longer history
        query = rewrite_follow_up(question, history)[: 3 * self.settings.max_question_chars + 40]
        adapter = self.current_adapter(adapter_version)  # fail before any work if it is broken

        t0 = time.perf_counter()
        with self._retrieval_lock:  # the embedder and the embedded store are used one at a time
            passages = self.retriever.search(query, principal, k=self.settings.answer_passages)
        retrieval_ms = (time.perf_counter() - t0) * 1000
        emit("meta", {
            "request_id": request_id, "conversation_id": conversation_id, "query": query,
            "passages": [{"id": p.citation_id, "label": p.label} for p in passages],
        })

        generation: Generation | None = None
        repairs: list[str] = []
        schema_valid: bool | None = None
        raw_citations = raw_valid = 0
        generation_ms = 0.0
        decision = None
        if not passages:
            # nothing this user may read is on the subject: refuse without asking the model
            answer: HouseAnswer = refusal("no_authorized_source")
        else:
            t1 = time.perf_counter()
            on_token = (lambda text: emit("token", text)) if on_event else None
            sentences = number_sentences(passages)
            messages = build_messages(query, passages)
            status = None
            if constrained:  # a decided status is enforced by the schema, so only when constrained
                status, decision = self._decide_status(query, passages, messages, adapter)
            generation = self.backend.generate(
                messages, adapter,
                max_tokens=self.settings.answer_max_tokens, on_token=on_token,
                schema=wire_json_schema(sentences, status=status) if constrained else None,
            )
            generation_ms = (time.perf_counter() - t1) * 1000
            try:
                wire = parse_wire_answer(generation.text, cuts=repairs)
                schema_valid = True
                raw_citations = len(wire.citations)
                parsed, unknown = resolve_wire_answer(wire, sentences, passages)
            except AnswerFormatError as exc:
                schema_valid, unknown = False, []
                # only reachable without constrained decoding or when cut at max_tokens
                repairs.append(f"unparseable output ({generation.finish_reason}): {exc}")
                parsed = refusal("not_in_policy")
            # quotes are slices of the passages, so this finds nothing unless the resolver broke;
            # it stays as the last check before anything reaches a caller
            answer, problems = repair_answer(parsed, passages)
            if isinstance(answer, Escalated):
                answer = self._escalation(answer, passages)
            repairs.extend(unknown + problems)
            raw_valid = raw_citations - len(unknown) if schema_valid else 0

        citations = self._resolve(answer, passages)
        total_ms = (time.perf_counter() - started) * 1000
        result = AnswerResult(
            request_id=request_id, conversation_id=conversation_id, user=principal.user_id,
            question=question, query=query, answer=answer, citations=citations, passages=passages,
            versions={
                "documents": {p.doc_id: p.version for p in passages},
                "adapter": adapter.version if adapter else None,
                "base_model": self.base_model.name if self.base_model else None,
                "base_model_sha256": self.base_model.sha256 if self.base_model else None,
                "prompt": self.fingerprint,
                "backend": self.backend.name,
                "merged": bool(generation and generation.merged),
            },
            latency_ms={"retrieval": round(retrieval_ms, 1), "generation": round(generation_ms, 1),
                        "total": round(total_ms, 1),
                        **({"first_token": round(generation.first_token_s * 1000, 1)}
                           if generation and generation.first_token_s is not None else {})},
            usage={"prompt_tokens": generation.prompt_tokens if generation else 0,
                   "completion_tokens": generation.completion_tokens if generation else 0},
            repairs=repairs,
            model_called=generation is not None,
            raw_text=generation.text if generation else None,
            schema_valid=schema_valid,
            raw_citations=raw_citations,
            raw_valid_citations=raw_valid,
            status_decision=decision,
        )
        self.audit.append(self._audit_record(result, endpoint))
        return result

    def _escalation(self, answer: Escalated, passages: Sequence[Passage]) -> Escalated:
        """Every escalation says the one configured thing, naming the team that owns the cited
        document (else the best passage's): the model decides *that* a person is needed, never
        what the user is told to do (free text could carry anything, e.g. a phishing address)."""
        by_id = {p.citation_id: p for p in passages}
        source = by_id[answer.citations[0].id] if answer.citations else passages[0]
        text = self.settings.escalation_template.format(owner=source.owner or "owner of this policy", title=source.title)
        return answer.model_copy(update={"answer": text[:MAX_ANSWER_CHARS]})

    def _resolve(self, answer: HouseAnswer, passages: Sequence[Passage]) -> list[ResolvedCitation]:
        by_id = {p.citation_id: p for p in passages}
        out = []
        for citation in answer.citations:
            p = by_id[citation.id]  # repair_answer kept only ids among the passages
            chunk = citation.id.rsplit("#", 1)[-1]
            out.append(ResolvedCitation(
                id=citation.id, quote=citation.quote, doc_id=p.doc_id, title=p.title, version=p.version,
                section=p.section_path, label=p.label,
                link=f"{self.settings.document_link_base}{p.source}#{chunk}", passage=p.text,
            ))
        return out

    def _audit_record(self, result: AnswerResult, endpoint: str) -> AuditRecord:
        return AuditRecord(
            kind="answer",
            request_id=result.request_id,
            endpoint=endpoint,
            user=result.user,
            conversation_id=result.conversation_id,
            question=result.question,
            query=result.query,
            # ids, versions and scores of what was retrieved *for this user*: never passage text
            passages=[{"id": p.citation_id, "doc_id": p.doc_id, "version": p.version,
                       "score": round(p.score, 6), "relevance": round(p.relevance or 0.0, 6)}
                      for p in result.passages],
            answer=render_answer(result.answer),
            status=result.answer.status,
            reason=result.answer.reason,
            repairs=result.repairs,
            versions=result.versions,
            latency_ms=result.latency_ms,
            usage=result.usage,
        )

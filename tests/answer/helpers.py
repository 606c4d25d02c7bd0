"""Helpers for the answer-service fixtures (tests/conftest.py): the real corpus, the real base
model and a tiny adapter trained here.

The adapter is trained for a few seconds on three hand-made pairs, so that one question
(`CARRY_OVER`, asked by alice) gets a cited answer from the real model; everything else it
answers is whatever the model makes of it, which the pipeline must verify like any output.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path

from answer.vllm_server import free_port  # noqa: F401  (the tests take it from here)
from core.settings import Settings

CARRY_OVER = "How many days of annual leave can I carry over?"
CARRY_OVER_CITATION = "leave-uk@v3#c8"
CARRY_OVER_ANSWER = "You can carry over up to 8 days of unused annual leave into the next leave year."
CARRY_OVER_QUOTE = "Employees may carry over up to 8 days of unused annual leave into the next leave year."
RESTRICTED = "What are the salary bands for engineers?"  # alice may read no pay document


def copy_data(source: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copytree(source / "index", dest / "index")
    shutil.copy2(source / "manifest.sqlite", dest / "manifest.sqlite")
    (dest / "models").symlink_to(source / "models")
    if (source / "adapters").exists():
        shutil.copytree(source / "adapters", dest / "adapters")
    return dest


def train_tiny_adapter(settings: Settings, embedder) -> str:
    """Train, register and promote a tiny adapter; returns its version."""
    from peft import set_peft_model_state_dict
    from transformers import AutoTokenizer

    from core.contract import Answered, Citation, render_answer
    from core.provision import base_model_identity
    from core.references import prompt_fingerprint
    from retrieval.retriever import Retriever
    from tuning.config import TrainConfig
    from tuning.examples import encode_pair
    from tuning.pairs import ContextPassage, TrainingPair
    from tuning.registry import AdapterRegistry
    from tuning.trainer import load_for_training, train_loop

    retriever = Retriever.from_settings(settings, embedder=embedder)
    try:
        questions = [CARRY_OVER, "How much unused annual leave may I carry over?",
                     "What is the limit on carrying over annual leave?"]
        pairs = []
        for n, q in enumerate(questions):
            passages = retriever.search(q, "alice", k=settings.answer_passages)
            assert CARRY_OVER_CITATION in [p.citation_id for p in passages], q
            target = Answered(status="answered", answer=CARRY_OVER_ANSWER,
                              citations=[Citation(id=CARRY_OVER_CITATION, quote=CARRY_OVER_QUOTE)])
            pairs.append(TrainingPair(
                id=f"tiny-{n}", seed_id="tiny", variant="original", user="alice", instruction=q,
                context=tuple(ContextPassage(citation_id=p.citation_id, doc_id=p.doc_id, title=p.title,
                                             section_path=p.section_path, text=p.text) for p in passages),
                response=render_answer(target),
            ))
    finally:
        retriever.store.close()
    base_dir, base = base_model_identity(settings)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    examples = [encode_pair(tokenizer, p) for p in pairs]
    config = TrainConfig(max_steps=12, batch_size=2, eval_examples=0, learning_rate=2e-3, warmup_steps=1)
    model, _ = load_for_training(base_dir, config)
    _, best = train_loop(model, examples, [], config, pad_id=tokenizer.eos_token_id)
    set_peft_model_state_dict(model, best)
    registry = AdapterRegistry(settings.adapters_dir)
    with registry.staging() as staged:
        model.save_pretrained(staged)
        record = registry.register(staged, {"base_model": base.as_dict(), "prompt_fingerprint": prompt_fingerprint(),
                                            "method": "lora", "config": config.to_json()})
    registry.promote(record.version, force=True, reason="test fixture")
    return record.version


def register_copy(data: Path, source: str = "v1", **manifest) -> str:
    """Register a new version with `source`'s adapter files (same base model); returns it."""
    from tuning.registry import AdapterRegistry

    registry = AdapterRegistry(data / "adapters")
    with registry.staging() as staged:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(data / "adapters" / source / name, staged / name)
        return registry.register(staged, {"base_model": registry.load(source).manifest.base_model.model_dump(), **manifest}).version


def register_with_decider(data: Path, status: str, source: str = "v1") -> str:
    """Register `source`'s weights with a status decider that always decides `status` (its
    intercepts say so, whatever the evidence); returns the new version."""
    from tuning.registry import AdapterRegistry
    from tuning.status import FEATURES, STATUSES, StatusDecider

    registry = AdapterRegistry(data / "adapters")
    decider = StatusDecider(tuple((0.0,) * len(FEATURES) for _ in STATUSES),
                            tuple(20.0 if s == status else 0.0 for s in STATUSES), {"pairs": 0})
    with registry.staging() as staged:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(data / "adapters" / source / name, staged / name)
        decider.save(staged)
        record = registry.load(source)
        return registry.register(staged, {"base_model": record.manifest.base_model.model_dump(),
                                          "prompt_fingerprint": record.manifest.prompt_fingerprint}).version


@contextlib.contextmanager
def serving(app):
    """The app behind a real uvicorn on loopback ."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events

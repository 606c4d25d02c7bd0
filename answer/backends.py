"""Generation backends: one protocol, chosen by `POLICYRAG_ANSWER_BACKEND`.

- `VllmBackend`: an OpenAI-compatible vLLM server with `--enable-lora`. Adapters are registered
  with the server by version name on first use (`/v1/load_lora_adapter`), so promoting or rolling
  back an adapter takes effect on the next request. Output is constrained to the request's JSON
  schema (the wire format with this prompt's sentence ids, `core.references`), sent as the
  grammar of `answer.grammar.house_grammar` in `structured_outputs` (see there why).
- `LocalBackend`: in-process transformers + PEFT, constrained by xgrammar's logits processor (the
  grammar engine vLLM uses, so both backends accept exactly the same outputs). One generation at
  a time: it exists for tests and machines without vLLM.

Both take chat messages, an adapter (version + folder, or None for the base model) and the JSON
schema to constrain the output to (None: free text), and return the text with token counts;
`on_token` receives the text as it is generated.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from answer.grammar import JSON_GRAMMAR, decoding_schema_text, house_grammar
from core.errors import PolicyRagError
from tuning.status import STATUS_PREFIX, TOP_LOGPROBS, model_top_logprobs, top_by_text

TokenCallback = Callable[[str], None]


class BackendUnavailable(PolicyRagError):
    """The model server is down, starting, or did not answer in time (HTTP 503)."""

    code = "backend_unavailable"
    http_status = 503


class AdapterUnavailable(PolicyRagError):
    """The promoted adapter cannot be loaded (corrupted files, refused by the server)."""

    code = "adapter_unavailable"
    http_status = 503


class _ModelGone(BackendUnavailable):
    """The server does not know the model asked for (an adapter lost in a restart)."""


@dataclass(frozen=True)
class AdapterRef:
    version: str
    path: Path
    files: dict[str, str] = field(default_factory=dict, hash=False)  # file name -> sha256 (the manifest's)

    @property
    def served_name(self) -> str:
        """The name the model server knows it by: the version and its weights' hash, so another
        adapter loaded under the version's name is never taken for this one."""
        digest = self.files.get("adapter_model.safetensors", "")
        return f"{self.version}-{digest[:12]}" if digest else self.version

    def verify(self) -> None:
        """Check every file against its recorded hash (the registry's check), right before a
        (re)load: files re-read after a server restart are checked again, not trusted."""
        from tuning.registry import AdapterCorrupted, verify_files

        try:
            verify_files(self.version, self.path, self.files)
        except AdapterCorrupted as exc:
            raise AdapterUnavailable(f"{exc}; it is not loaded") from None


@dataclass(frozen=True)
class Generation:
    text: str
    model: str  # the base model's served name or the adapter version that produced the text
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    first_token_s: float | None  # seconds from the request to the first generated text
    merged: bool = False  # the adapter's merged weights answered (answer/merged.py), not run-time LoRA


class Backend(Protocol):
    name: str

    def generate(
        self,
        messages: Sequence[dict[str, str]],
        adapter: AdapterRef | None,
        *,
        max_tokens: int,
        on_token: TokenCallback | None = None,
        schema: dict | None = None,
    ) -> Generation: ...

    def status_top_logprobs(self, messages: Sequence[dict[str, str]], adapter: AdapterRef | None) -> dict[str, float]:
        """The most likely next tokens where the answer writes its status (tuning/status.py)."""
        ...

    def health(self) -> tuple[bool, str]: ...

    def close(self) -> None: ...


class VllmBackend:
    """Talks to a vLLM OpenAI-compatible server at `base_url` (ending in /v1)."""

    name = "vllm"

    def __init__(self, base_url: str, *, served_base: str = "base", api_key: str | None = None,
                 timeout_s: float = 120.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.served_base = served_base
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # one pooled client shared by every request thread (httpx.Client is thread-safe)
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self._loaded: set[str] = set()
        self._load_lock = threading.Lock()

    # -- adapters -----------------------------------------------------------------------------

    def served_models(self) -> set[str]:
        response = self._request("GET", "/models")
        return {m["id"] for m in response.json().get("data", [])}

    def ensure_adapter(self, adapter: AdapterRef) -> None:
        """Register the adapter with the server under its served name (version + weights hash),
        once per server start; its files are verified before every load."""
        name = adapter.served_name
        if name in self._loaded:
            return
        with self._load_lock:
            if name in self._loaded:
                return
            if name not in self.served_models():
                adapter.verify()
                response = self._request(
                    "POST", "/load_lora_adapter",
                    json={"lora_name": name, "lora_path": str(adapter.path.resolve())},
                    check=False,
                )
                if response.status_code >= 400 and "already" not in response.text.lower():
                    raise AdapterUnavailable(
                        f"the vLLM server refused adapter {adapter.version} ({response.status_code}: "
                        f"{response.text[:200]}); start it with --enable-lora and "
                        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true, and --max-lora-rank >= the adapter's rank"
                    )
            self._loaded.add(name)

    def forget_adapters(self) -> None:
        """After a server restart nothing is loaded any more."""
        with self._load_lock:
            self._loaded.clear()

    # -- generation ---------------------------------------------------------------------------

    def generate(self, messages, adapter, *, max_tokens, on_token=None, schema=None) -> Generation:
        return self._retrying(adapter, lambda: self._generate(messages, adapter, max_tokens=max_tokens,
                                                              on_token=on_token, schema=schema))

    def status_top_logprobs(self, messages, adapter) -> dict[str, float]:
        return self._retrying(adapter, lambda: self._status_top_logprobs(messages, adapter))

    def _retrying(self, adapter, call):
        try:
            return call()
        except _ModelGone:
            if adapter is None:
                raise
            # the server restarted (or was restarted by someone else) and lost its adapters:
            # register the adapter again and retry once
            self.forget_adapters()
            return call()

    def _status_top_logprobs(self, messages, adapter) -> dict[str, float]:
        """One token after the answer's opening `{"status": "`, continued from a partial assistant
        message; the prompt is the generation's own, so the prefix cache serves it again."""
        if adapter is not None:
            self.ensure_adapter(adapter)
        body = {
            "model": adapter.served_name if adapter else self.served_base,
            "messages": [*messages, {"role": "assistant", "content": STATUS_PREFIX}],
            "continue_final_message": True, "add_generation_prompt": False,
            "temperature": 0.0, "max_tokens": 1, "logprobs": True, "top_logprobs": TOP_LOGPROBS,
        }
        data = self._request("POST", "/chat/completions", json=body).json()
        content = ((data["choices"][0].get("logprobs") or {}).get("content") or [{}])[0]
        return top_by_text((e["token"], float(e["logprob"])) for e in content.get("top_logprobs") or [])

    def _generate(self, messages, adapter, *, max_tokens, on_token, schema) -> Generation:
        if adapter is not None:
            self.ensure_adapter(adapter)
        model = adapter.served_name if adapter else self.served_base
        body = {
            "model": model,
            "messages": list(messages),
            "temperature": 0.0,
            "max_tokens": max_tokens,
            **({"structured_outputs": {"grammar": house_grammar(schema)}} if schema is not None else {}),
        }
        started = time.perf_counter()
        if on_token is None:
            data = self._request("POST", "/chat/completions", json=body).json()
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return Generation(
                text=choice["message"]["content"] or "", model=model,
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                finish_reason=choice.get("finish_reason") or "stop", first_token_s=None,
            )
        return self._stream(body, model, started, on_token)

    def _stream(self, body: dict, model: str, started: float, on_token: TokenCallback) -> Generation:
        import httpx

        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        parts: list[str] = []
        first: float | None = None
        usage: dict = {}
        finish = "stop"
        try:
            with self._http.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices", []):
                        delta = (choice.get("delta") or {}).get("content") or ""
                        if delta:
                            if first is None:
                                first = time.perf_counter() - started
                            parts.append(delta)
                            on_token(delta)
                        finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"the vLLM server at {self.base_url} failed mid-answer ({exc}); retry shortly") from exc
        return Generation("".join(parts), model, int(usage.get("prompt_tokens", 0)),
                          int(usage.get("completion_tokens", 0)), finish, first)

    def _request(self, method: str, path: str, *, check: bool = True, **kwargs):
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                f"the vLLM server at {self.base_url} is not reachable ({type(exc).__name__}: {exc}); "
                "check that it is running (policyrag serve starts one unless POLICYRAG_VLLM_URL is set)"
            ) from exc
        if check and response.status_code >= 400:
            self._raise_for(response)
        return response

    def _raise_for(self, response) -> None:
        if response.status_code == 404 and ("does not exist" in response.text or "lora" in response.text.lower()):
            raise _ModelGone(f"the vLLM server does not serve the requested model: {response.text[:200]}")
        if response.status_code >= 500 or response.status_code in (404, 429):
            raise BackendUnavailable(f"the vLLM server answered {response.status_code}: {response.text[:200]}")
        raise PolicyRagError(f"the vLLM server rejected the request ({response.status_code}): {response.text[:300]}")

    def health(self) -> tuple[bool, str]:
        try:
            models = sorted(self.served_models())
        except BackendUnavailable as exc:
            return False, str(exc)
        return True, f"vLLM at {self.base_url} serving {', '.join(models)}"

    def close(self) -> None:
        self._http.close()


class LocalBackend:
    """transformers + PEFT in this process, constrained by xgrammar. Serial: one answer at a time."""

    name = "local"

    def __init__(self, model_dir: Path) -> None:
        import torch
        import xgrammar as xgr
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.base.eval()
        self.model = self.base  # becomes a PeftModel once an adapter is loaded
        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.base.config.vocab_size)
        # compiles each request's schema; the compiler caches compiled grammars by schema text
        self._compiler = xgr.GrammarCompiler(info)
        self._adapters: set[str] = set()
        self._lock = threading.Lock()

    def _activate(self, adapter: AdapterRef | None):
        from peft import PeftModel

        if adapter is None:
            return None
        if adapter.version not in self._adapters:
            adapter.verify()
            if not self._adapters:
                self.model = PeftModel.from_pretrained(self.base, adapter.path, adapter_name=adapter.version)
            else:
                self.model.load_adapter(adapter.path, adapter_name=adapter.version)
            self._adapters.add(adapter.version)
            self.model.eval()
        self.model.set_adapter(adapter.version)
        return adapter.version

    def generate(self, messages, adapter, *, max_tokens, on_token=None, schema=None) -> Generation:
        import torch
        import xgrammar as xgr
        from transformers import TextIteratorStreamer

        prompt = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        inputs = self.tokenizer(prompt, return_tensors="pt")
        with self._lock:
            started = time.perf_counter()
            active = self._activate(adapter)
            # the base model when no adapter is asked for, even after adapters were loaded
            plain = self.model.disable_adapter() if active is None and self._adapters else contextlib.nullcontext()
            processors = [xgr.contrib.hf.LogitsProcessor(self._grammar(schema))] if schema is not None else []
            kwargs = dict(**inputs, max_new_tokens=max_tokens, do_sample=False,
                          logits_processor=processors, pad_token_id=self.tokenizer.eos_token_id)
            first: float | None = None
            with plain, torch.inference_mode():
                if on_token is None:
                    out = self.model.generate(**kwargs)
                    new = out[0, inputs["input_ids"].shape[1]:]
                    text = self.tokenizer.decode(new, skip_special_tokens=True)
                    count = int(new.shape[0])
                else:
                    streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
                    result: dict = {}

                    def run() -> None:
                        try:
                            result["out"] = self.model.generate(**kwargs, streamer=streamer)
                        except BaseException as exc:  # surfaced below, after the stream ends
                            result["error"] = exc
                            streamer.end()

                    worker = threading.Thread(target=run, daemon=True)
                    worker.start()
                    parts = []
                    for piece in streamer:
                        if piece:
                            if first is None:
                                first = time.perf_counter() - started
                            parts.append(piece)
                            on_token(piece)
                    worker.join()
                    if "error" in result:
                        raise result["error"]
                    text = "".join(parts)
                    count = int(result["out"].shape[1] - inputs["input_ids"].shape[1])
        finish = "length" if count >= max_tokens else "stop"
        return Generation(text, active or "base", int(inputs["input_ids"].shape[1]), count, finish, first)

    def status_top_logprobs(self, messages, adapter) -> dict[str, float]:
        with self._lock:
            active = self._activate(adapter)
            plain = self.model.disable_adapter() if active is None and self._adapters else contextlib.nullcontext()
            with plain:
                return model_top_logprobs(self.model, self.tokenizer, messages)

    def _grammar(self, schema: dict):
        return self._compiler.compile_json_schema(decoding_schema_text(schema), **JSON_GRAMMAR)

    def health(self) -> tuple[bool, str]:
        return True, f"in-process transformers ({self.model_dir.name}), adapters loaded: {sorted(self._adapters) or 'none'}"

    def close(self) -> None:
        pass

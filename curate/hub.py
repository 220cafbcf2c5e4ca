"""What `datasets.load_dataset(FOLDER)` needs to open our shards with no arguments.

A Hugging Face dataset repo tells ``datasets`` its files and types in the YAML header of its
``README.md``: ``configs`` (which shards form which split) and ``dataset_info`` (``features``
and the split sizes). Without it ``datasets`` infers the JSON types from the first five samples
(a field null there and a float later breaks the load) and guesses the format from the most
common file extension of the folder (our dataset folders also hold parquet, JSON and images).
With it, ``load_dataset(FOLDER)`` opens exactly the shards with exactly the types, and checks
each split's sample count against the header: shards that lost or gained samples since the
card was written are reported (``NonMatchingSplitsSizesError``), never silently read.

The types are read from the shards themselves (:func:`scan_shards`), so the header always
describes what is on disk; a JSON field whose type differs between samples is a writer bug
and is listed in ``ShardSchema.problems``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.fsutil import write_text
from curate.shards import ReadReport, ShardWriter, iter_shard, list_shards, read_stats, shard_name

log = logging.getLogger(__name__)

# the member decoders of the `datasets` webdataset builder, as feature types
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
TEXT_FIELDS = ("txt", "text", "caption")
INT_FIELDS = ("cls", "cls2", "index", "inx", "id")
NUMBER_TYPES = ("int64", "float64")


@dataclass
class ShardSchema:
    """Members and JSON types of a set of shards, as ``datasets`` features."""

    fields: list[str] = field(default_factory=list)        # member extensions in first-seen order
    json: dict[str, Any] = field(default_factory=dict)     # JSON key -> type (see _type_of)
    samples: int = 0
    problems: list[str] = field(default_factory=list)      # fields whose type or presence varies

    def features(self) -> list[dict[str, Any]]:
        """The ``dataset_info.features`` list of the YAML header (member order, then key and url)."""
        out: list[dict[str, Any]] = []
        for ext in self.fields:
            kind = ext.rsplit(".", 1)[-1]
            if kind in IMAGE_FIELDS:
                out.append({"name": ext, "dtype": "image"})
            elif kind == "json":
                out.append({"name": ext, "struct": [_feature(k, t) for k, t in sorted(self.json.items())]})
            elif kind in TEXT_FIELDS:
                out.append({"name": ext, "dtype": "string"})
            elif kind in INT_FIELDS:
                out.append({"name": ext, "dtype": "int64"})
            else:
                out.append({"name": ext, "dtype": "binary"})
        return out + [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]


def _type_of(value: Any) -> Any:
    """A JSON value's type: "bool", "int64", "float64", "string", "null", ("list", T) or {key: T}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        inner: Any = "null"
        for v in value:
            inner = _merge(inner, _type_of(v), [], "list item")
        return ("list", inner)
    if isinstance(value, dict):
        return {k: _type_of(v) for k, v in value.items()}
    return "string"


def _merge(a: Any, b: Any, problems: list[str], where: str) -> Any:
    """The common type of two: null gives way to anything, int64 to float64; else a problem."""
    if a == b:
        return a
    if a == "null":
        return b
    if b == "null":
        return a
    if isinstance(a, str) and isinstance(b, str) and {a, b} == set(NUMBER_TYPES):
        problems.append(f"{where}: int64 in some samples, float64 in others")
        return "float64"
    if isinstance(a, tuple) and isinstance(b, tuple):
        return ("list", _merge(a[1], b[1], problems, f"{where}[]"))
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _merge(a.get(k, "null"), b.get(k, "null"), problems, f"{where}.{k}") for k in {**a, **b}}
    problems.append(f"{where}: {_name(a)} in some samples, {_name(b)} in others")
    return "string"


def _name(t: Any) -> str:
    return f"list of {_name(t[1])}" if isinstance(t, tuple) else "object" if isinstance(t, dict) else str(t)


def _inner(t: Any) -> Any:
    """What goes under ``list:`` in the YAML: a dtype, a struct's field list, or a nested list."""
    if isinstance(t, tuple):
        return {"list": _inner(t[1])}
    if isinstance(t, dict):
        return [_feature(k, v) for k, v in sorted(t.items())]
    return "string" if t == "null" else t


def _feature(name: str, t: Any) -> dict[str, Any]:
    if isinstance(t, tuple):
        return {"name": name, "list": _inner(t[1])}
    if isinstance(t, dict):
        return {"name": name, "struct": [_feature(k, v) for k, v in sorted(t.items())]}
    return {"name": name, "dtype": "string" if t == "null" else t}


def scan_shards(shards: Iterable[str | os.PathLike]) -> ShardSchema:
    """Read every sample's members (JSON parsed, images skipped) and type each JSON field.

    A field missing from some samples, null in some and typed in others, or of two types, is a
    problem (``datasets`` and ``webdataset`` users would trip on it); nulls only are typed string.
    """
    schema = ShardSchema()
    types: dict[str, Any] = {}
    present: dict[str, int] = {}
    nulls: dict[str, int] = {}
    problems: list[str] = []
    for shard in shards:
        rep = ReadReport(shard=Path(shard).name)
        for s in iter_shard(shard, rep, exts=("json",)):
            schema.samples += 1
            meta = json.loads(s["json"]) if "json" in s else {}
            for k, v in meta.items() if isinstance(meta, dict) else ():
                present[k] = present.get(k, 0) + 1
                nulls[k] = nulls.get(k, 0) + (v is None)
                types[k] = _merge(types.get(k, "null"), _type_of(v), problems, k)
        for ext in _member_exts(Path(shard)):
            if ext not in schema.fields:
                schema.fields.append(ext)
        if rep.error:
            problems.append(f"{Path(shard).name}: {rep.error}")
    for k in sorted(types):
        if present[k] < schema.samples:
            problems.append(f"{k}: missing in {schema.samples - present[k]} of {schema.samples} samples")
        if 0 < nulls[k] < present[k]:
            problems.append(f"{k}: null in {nulls[k]} of {present[k]} samples, typed in the others")
    schema.json = types
    schema.problems = sorted(set(problems))
    return schema


def _member_exts(shard: Path) -> list[str]:
    """Member extensions of a shard in order (its ``.stats.json`` when written by curate, else its first sample)."""
    st = read_stats(shard)
    if st and st.get("extensions"):
        return list(st["extensions"])
    for s in iter_shard(shard):
        return [k for k in s if not k.startswith("__")]
    return []


def shard_plan(n: int, maxcount: int, min_shards: int) -> list[int]:
    """Sample counts of a split's shards: at least ``min_shards`` (so a DataLoader with that many
    workers gives each one a shard), at most ``maxcount`` per shard, sizes differing by at most one."""
    if n <= 0:
        return []
    k = min(n, max(-(-n // maxcount), min_shards))
    return [(i + 1) * n // k - i * n // k for i in range(k)]


class SplitShardWriter:
    """Writes one split's samples into ``PREFIX-NNNNNN.tar`` shards of the planned sizes (``shard_plan``)."""

    def __init__(self, folder: Path, prefix: str, sizes: list[int]):
        self.folder, self.prefix, self.sizes = folder, prefix, sizes
        self.index, self.count, self.writer = 0, 0, None

    def write(self, sample: dict[str, Any]) -> str:
        if self.index >= len(self.sizes):
            raise CurateError(f"more samples than the {sum(self.sizes)} planned for {self.prefix} shards")
        if self.writer is None:
            self.writer = ShardWriter(self.folder, name=shard_name(self.prefix, self.index), maxcount=1 << 62,
                                      maxsize=1 << 62)
        name = self.writer.write(sample)
        self.count += 1
        if self.count == self.sizes[self.index]:
            self.writer.close()
            self.writer, self.index, self.count = None, self.index + 1, 0
        return name

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def fields_markdown(schema: ShardSchema, docs: Mapping[str, str]) -> str:
    """The JSON fields as a Markdown table: name, type, meaning."""
    lines = ["| field | type | meaning |", "|---|---|---|"]
    for name, t in sorted(schema.json.items()):
        lines.append(f"| `{name}` | {_name(t)} | {docs.get(name, '')} |")
    return "\n".join(lines)


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` samples."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return name
    return "100M<n<1B"


def card_header(splits: Mapping[str, tuple[str, int]], schema: ShardSchema, *, pretty_name: str,
                task_categories: list[str], tags: list[str] | None = None, license: str = "other") -> str:
    """The ``---``-fenced YAML header: ``splits`` maps split name -> (shard glob, samples)."""
    from huggingface_hub import DatasetCardData

    total = sum(n for _, n in splits.values())
    data = DatasetCardData(
        license=license, pretty_name=pretty_name, task_categories=task_categories, tags=tags or None,
        size_categories=[size_category(total)],
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": glob} for s, (glob, _) in splits.items()]}],
        dataset_info={"features": schema.features(),
                      "splits": [{"name": s, "num_examples": n} for s, (_, n) in splits.items()]},
    )
    return f"---\n{data.to_yaml()}\n---\n"


def loading_snippet(folder_hint: str, split_glob: str, fewest_shards: int) -> str:
    """How to read the shards: ``datasets`` with no arguments, ``webdataset`` in a DataLoader.

    The code block runs as written once ``FOLDER`` points at the folder (the tests run it)."""
    return f"""```python
FOLDER = "{folder_hint}"
from datasets import load_dataset
ds = load_dataset(FOLDER)  # splits, types and sizes from this card's header: no other argument

import glob, torch, webdataset as wds
urls = sorted(glob.glob(f"{{FOLDER}}/{split_glob}"))
workers = 2

def my_share(samples):  # with more workers than shards: each worker keeps every n-th sample
    info = torch.utils.data.get_worker_info()
    for i, sample in enumerate(samples):
        if info is None or i % info.num_workers == info.id:
            yield sample

if workers <= len(urls):  # webdataset hands each worker whole shards
    pipe = wds.WebDataset(urls, shardshuffle=False)
else:  # every worker reads every shard and keeps its share
    pipe = wds.WebDataset(urls, shardshuffle=False, workersplitter=None).compose(my_share)
loader = torch.utils.data.DataLoader(pipe.decode("pil"), batch_size=None, num_workers=workers)
```

The smallest split has {fewest_shards} shard(s). With webdataset (and clip-retrieval, whose
preprocessing workers read shards the same way), each DataLoader worker reads whole shards, and a
worker left without one stops with "No samples found in dataset; perhaps you have fewer shards
than workers": use at most {fewest_shards} worker(s) per split, or the `my_share` form above."""


def write_shard_card(folder: str | os.PathLike, title: str, what: str, split: str = "train") -> Path | None:
    """A README.md with the YAML header for a folder of shards we wrote (pool, generated candidates).

    None (nothing written) when the folder holds no shards."""
    folder = Path(folder)
    try:
        shards = list_shards(folder)
    except Exception:  # noqa: BLE001 - no shards: no card
        return None
    schema = scan_shards(shards)
    if schema.problems:
        log.warning("%s: JSON fields without one type across samples: %s", folder, "; ".join(schema.problems[:5]))
    prefix = os.path.commonprefix([p.name.removesuffix(".tar") for p in shards]).rstrip("0123456789")
    glob = f"{prefix}*.tar" if prefix else "*.tar"
    header = card_header({split: (glob, schema.samples)}, schema, pretty_name=title,
                         task_categories=["image-feature-extraction"])
    body = (f"# {title}\n\n{what}\n\n{schema.samples:,} samples in {len(shards)} shard(s) "
            f"(`{glob}`), fields: {', '.join(f'`{f}`' for f in schema.fields)}.\n\n"
            + loading_snippet("path/to/this/folder", glob, len(shards)) + "\n")
    path = folder / "README.md"
    write_text(path, header + "\n" + body)
    return path

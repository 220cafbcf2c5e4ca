"""Benchmark: `curate embed` vs `clip-retrieval inference` vs the model's forward pass alone.

Same WebDataset shards (JPEGs of --size px, 256 by default, + captions), same model file (a randomly initialised
open_clip ViT-B-32 saved as a checkpoint: speed does not depend on the weights, and no weights
can be downloaded here), same batch size and worker count, on CPU:

- **ours**: the `curate embed` command (start-up included: that is what a user waits for);
- **clip-retrieval**: the `clip-retrieval inference` command, ``--num_prepro_workers`` = our
  ``--workers``;
- **model only**: one process that decodes and preprocesses every image and tokenises every
  caption *before* the clock starts, then times only the image and text forward passes over
  the same batches, with torch's default threads (all cores). The ceiling for any tool.

Order alternated between repeats, median of 3, load recorded. The three outputs are compared
(keys, and every embedding to cosine >= 0.999); a side that disagrees is reported as a
mismatch instead of a ratio. Then ours alone at 1x and 10x input: time and peak RSS (whole
process tree) growth. Writes bench/results/bench_embed.{json,md} (bench_embed_<size>px.* for another --size).

    .venv/bin/python bench/bench_embed.py --images 512 --batch-size 64 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent

from bench.common import (  # noqa: E402
    AGREE_COSINE,
    Measured,
    alternate,
    fmt_ratio,
    growth,
    median_of,
    min_cosine,
    ratio_or_mismatch,
    run_measured,
    save,
    summary_row,
    uptime,
)

ENV = {**os.environ, "CURATE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def make_shards(folder: Path, n: int, per_shard: int, size: int = 256, seed: int = 0, prefix: str = "bench") -> list[Path]:
    """Shards of varied JPEGs (gradients + noise + a coloured box) with txt captions."""
    from PIL import Image, ImageDraw

    from curate.shards import write_shard

    rng = np.random.default_rng(seed)
    paths = []
    for s in range(0, n, per_shard):
        samples = []
        for i in range(s, min(n, s + per_shard)):
            base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None] * rng.random(3)
            arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(arr)
            x, y = rng.integers(0, size // 2, 2)
            ImageDraw.Draw(im).rectangle((int(x), int(y), int(x) + size // 3, int(y) + size // 3),
                                         fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            samples.append({"__key__": f"img{i:06d}", "jpg": buf.getvalue(), "txt": f"a photo of box number {i}"})
        p = folder / f"{prefix}-{s // per_shard:06d}.tar"
        write_shard(p, samples)
        paths.append(p)
    return paths


MODEL_ONLY = r"""
import json, sys, time
import numpy as np
import torch
sys.path.insert(0, {repo!r})
from curate.embed.backends import load_model
from curate.embed.store import l2_normalise
from curate.images import open_rgb
from curate.shards import iter_shard, list_shards

enc = load_model({spec!r}, "cpu")
keys, pixels, captions = [], [], []
for shard in list_shards({shards!r}):
    for s in iter_shard(shard):
        keys.append(s["__key__"])
        pixels.append(enc.preprocess(open_rgb(s["jpg"])))
        captions.append(s["txt"].decode())
B = {batch}
batches = [torch.stack(pixels[i:i + B]) for i in range(0, len(pixels), B)]
tokens = [enc.tokenizer(captions[i:i + 256]) for i in range(0, len(captions), 256)]
w0, c0 = time.perf_counter(), time.process_time()
with torch.inference_mode():
    img = [enc.model.encode_image(b) for b in batches]
    txt = [enc.model.encode_text(t) for t in tokens]
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
np.save({out!r} + "/img.npy", l2_normalise(torch.cat(img).float().numpy()))
np.save({out!r} + "/txt.npy", l2_normalise(torch.cat(txt).float().numpy()))
print(json.dumps({{"keys": keys, "forward_wall_s": wall, "forward_cpu_s": cpu, "threads": torch.get_num_threads()}}))
"""


def run_ours(shards: Path, spec: str, out: Path, batch: int, workers: int, extra: list[str] | None = None) -> Measured:
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (the same command on its own output resumes)
    return run_measured([BIN / "curate", "-q", "embed", shards, "--model", spec, "--out", out,
                         "--batch-size", batch, "--workers", workers, *(extra or [])], env=ENV)


def run_clip_retrieval(shards: list[Path], spec: str, out: Path, batch: int, workers: int) -> Measured:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    pattern = str(shards[0].parent / f"bench-{{000000..{len(shards) - 1:06d}}}.tar")
    return run_measured([BIN / "clip-retrieval", "inference", "--input_dataset", pattern, "--input_format", "webdataset",
                         "--output_folder", out, "--clip_model", spec, "--batch_size", batch,
                         "--num_prepro_workers", workers, "--enable_text", "True", "--enable_metadata", "False",
                         "--use_jit", "False", "--enable_wandb", "False"], env=ENV, timeout=3600)


def run_model_only(shards: Path, spec: str, out: Path, batch: int) -> Measured:
    out.mkdir(parents=True, exist_ok=True)
    code = MODEL_ONLY.format(repo=str(REPO), spec=spec, shards=str(shards), batch=batch, out=str(out))
    m = run_measured([sys.executable, "-c", code], env=ENV)
    info = json.loads(m.stdout.strip().splitlines()[-1])
    # the clock of this side is the forward passes only (preprocessing happened before it started)
    m.extra = {"process_wall_s": round(m.wall, 2), "threads": info["threads"]}
    m.wall, m.cpu = info["forward_wall_s"], info["forward_cpu_s"]
    m.stdout = json.dumps(info["keys"])
    return m


def compare(ours: Path, peer_keys: list[str], peer_img: np.ndarray, peer_txt: np.ndarray | None) -> tuple[str | None, float]:
    """None when the outputs agree (same keys, cosine >= 0.999), else what differs; and the min cosine."""
    from curate.embed.store import read_embeddings

    k1, m1 = read_embeddings(ours)
    if sorted(k1) != sorted(peer_keys):
        return f"samples differ ({len(k1)} vs {len(peer_keys)})", float("nan")
    pos = {k: i for i, k in enumerate(peer_keys)}
    order = [pos[k] for k in k1]
    cos = min_cosine(m1, np.asarray(peer_img)[order])
    if peer_txt is not None:
        _, t1 = read_embeddings(ours, kind="text")
        cos = min(cos, min_cosine(t1, np.asarray(peer_txt)[order]))
    return (None if cos >= AGREE_COSINE else f"embeddings differ (min cosine {cos:.5f})"), cos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--per-shard", type=int, default=128)
    ap.add_argument("--size", type=int, default=256, help="image side in px (512: JPEGs ours decodes at 1/2 scale)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--growth-base", type=int, default=128, help="images at 1x for the 1x -> 10x growth (0: skip)")
    ap.add_argument("--render", type=Path, help="rewrite the Markdown and summary of a saved results JSON, run nothing")
    args = ap.parse_args()
    if args.render:
        finish(json.loads(args.render.read_text()))
        return

    from curate.embed.random_models import save_random_open_clip
    from curate.embed.store import read_embeddings

    print(uptime(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        root = Path(tmp)
        # at least one shard per worker: clip-retrieval's webdataset reader hangs with an idle worker
        per_shard = max(1, min(args.per_shard, -(-args.images // args.workers)))
        shards = make_shards(root / "shards", args.images, per_shard, size=args.size)
        spec = save_random_open_clip(root / "model", args.arch)
        b, w = args.batch_size, args.workers
        runs = alternate({
            "ours": lambda: run_ours(root / "shards", spec, root / "ours", b, w),
            "ours, 1 process + decode worker": lambda: run_ours(root / "shards", spec, root / "ours-fed", b, 1,
                                                                ["--decode-workers", "1"]),
            "clip-retrieval": lambda: run_clip_retrieval(shards, spec, root / "cr", b, w),
            "model only": lambda: run_model_only(root / "shards", spec, root / "model-only", b),
        }, args.repeats)
        med = {name: median_of(r) for name, r in runs.items()}
        k_cr, m_cr = read_embeddings(root / "cr")
        _, t_cr = read_embeddings(root / "cr", kind="text")
        cr_mismatch, cr_cos = compare(root / "ours", k_cr, m_cr, t_cr)
        mo_keys = json.loads(med["model only"].stdout)
        mo_mismatch, mo_cos = compare(root / "ours", mo_keys, np.load(root / "model-only" / "img.npy"),
                                      np.load(root / "model-only" / "txt.npy"))
        fed_mismatch, fed_cos = compare(root / "ours-fed", mo_keys, np.load(root / "model-only" / "img.npy"),
                                        np.load(root / "model-only" / "txt.npy"))
        grow: list[dict] = []
        if args.growth_base:
            for scale in (1, 10):
                n = args.growth_base * scale
                folder = root / f"g{scale}"
                make_shards(folder, n, max(1, args.growth_base // w), size=args.size, seed=scale)  # >= one shard per worker
                m = run_ours(folder, spec, root / f"g{scale}-out", b, w)
                grow.append({"scale": scale, "images": n, **m.to_dict(), "images_per_s": round(n / m.wall, 2)})
                print(f"   growth {scale}x: {n} images in {m.wall:.1f} s, peak RSS {m.peak_rss_mb:.0f} MB", flush=True)

    n = args.images
    rate = {name: n / m.wall for name, m in med.items()}
    cpu_rate = {name: n / m.cpu for name, m in med.items()}
    fed = "ours, 1 process + decode worker"
    result = {
        "task": "embed images + captions of WebDataset shards with a random open_clip checkpoint, CPU",
        "images": n, "image_size": args.size, "arch": args.arch, "batch_size": b, "workers": w, "repeats": args.repeats,
        "shards": len(shards),
        "runs": {name: [m.to_dict() for m in r] for name, r in runs.items()},
        "median": {name: {**m.to_dict(), "images_per_s": round(rate[name], 2)} for name, m in med.items()},
        "ratio_vs_clip_retrieval": ratio_or_mismatch(rate["ours"], rate["clip-retrieval"], cr_mismatch),
        "ratio_vs_clip_retrieval_cpu_time": ratio_or_mismatch(cpu_rate["ours"], cpu_rate["clip-retrieval"], cr_mismatch),
        "ratio_vs_model_only": ratio_or_mismatch(rate["ours"], rate["model only"], mo_mismatch),
        "ratio_vs_model_only_cpu_time": ratio_or_mismatch(cpu_rate["ours"], cpu_rate["model only"], mo_mismatch),
        "min_cosine_vs_clip_retrieval": cr_cos, "min_cosine_vs_model_only": mo_cos, "min_cosine_one_process": fed_cos,
        "mismatch_vs_model_only": mo_mismatch,
        "ratio_one_process_decode_worker_vs_model_only": ratio_or_mismatch(rate[fed], rate["model only"], fed_mismatch),
        "growth": grow,
        "time_growth_exponent": growth([g["images"] for g in grow], [g["wall_s"] for g in grow]) if grow else None,
        "rss_growth_exponent": growth([g["images"] for g in grow], [g["peak_rss_mb"] for g in grow]) if grow else None,
    }
    finish(result)


def steady_state(result: dict) -> dict | None:
    """Ours' throughput once started: the images the 10x growth run embedded beyond the 1x run over the time it
    took beyond it (start-up, imports and model loading, cancel out), beside the model forward alone, and the
    start-up that leaves for the 1x run. None without the growth runs."""
    g = result.get("growth") or []
    if len(g) < 2 or g[-1]["wall_s"] <= g[0]["wall_s"]:
        return None
    per_s = (g[-1]["images"] - g[0]["images"]) / (g[-1]["wall_s"] - g[0]["wall_s"])
    model = result["median"]["model only"]["images_per_s"]
    return {"images_per_s": round(per_s, 2), "ratio_vs_model_only": ratio_or_mismatch(
        per_s, model, result.get("mismatch_vs_model_only")), "startup_s": round(g[0]["wall_s"] - g[0]["images"] / per_s, 1)}


def finish(result: dict) -> None:
    """Add the steady state and the summary rows to ``result``, write the Markdown and save both (also from a
    saved result: ``--render``)."""
    med, n, w = result["median"], result["images"], result["workers"]
    rate = {name: m["images_per_s"] for name, m in med.items()}
    fed = "ours, 1 process + decode worker"
    r_cr, r_mo, r_fed = (result["ratio_vs_clip_retrieval"], result["ratio_vs_model_only"],
                         result["ratio_one_process_decode_worker_vs_model_only"])
    steady = result["steady_state"] = steady_state(result)
    result["summary"] = [
        summary_row("embed vs clip-retrieval (CPU)", f"{rate['ours']:.1f} img/s",
                    f"clip-retrieval inference {rate['clip-retrieval']:.1f} img/s", r_cr, ">= 2x",
                    peak_rss_mb={k: round(m["peak_rss_mb"]) for k, m in med.items()}),
        summary_row("embed vs model forward alone (CPU)", f"{rate['ours']:.1f} img/s",
                    f"forward only {rate['model only']:.1f} img/s", r_mo, ">= 1.0x"),
        summary_row("embed --workers 1 --decode-workers 1 vs model forward alone (CPU)",
                    f"{rate[fed]:.1f} img/s", f"forward only {rate['model only']:.1f} img/s", r_fed, ">= 0.9x"),
    ]
    if steady:
        result["summary"].append(summary_row(
            "embed once started (1x -> 10x growth runs) vs model forward alone (CPU)",
            f"{steady['images_per_s']:.1f} img/s", f"forward only {rate['model only']:.1f} img/s",
            steady["ratio_vs_model_only"], ">= 1.0x"))
    for row in result["summary"]:  # the load of the run, not of a later --render
        row["load"] = max(m["load"][0] for m in med.values())
    cos = {k: result.get(f"min_cosine_{k}", float("nan")) for k in ("vs_clip_retrieval", "vs_model_only", "one_process")}
    rows = [f"| {name} | {m['wall_s']:.1f} | {rate[name]:.1f} | {m['cpu_s']:.1f} | {m['peak_rss_mb']:,.0f} | "
            f"{', '.join(f'{x:.1f}' for x in m['load'])} |" for name, m in med.items()]
    shards = result.get("shards") or -(-n // max(1, min(128, -(-n // w))))
    md = [
        "# curate embed vs clip-retrieval inference vs the model alone",
        "",
        f"{n} images ({result['image_size']} px JPEG) + captions in {shards} shards, open_clip {result['arch']} (random "
        f"weights, same checkpoint file), batch {result['batch_size']}, {w} workers, CPU. Median of {result['repeats']} "
        "(order alternated). Ours and clip-retrieval: the whole command; model only: the image + text forward passes "
        f"on tensors prepared beforehand ({med['model only'].get('threads')} torch threads).",
        "",
        "| side | wall s | images/s | CPU s | peak memory MB (PSS, process tree) | load at end |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"- ours / clip-retrieval: **{fmt_ratio(r_cr)}** wall, {fmt_ratio(result['ratio_vs_clip_retrieval_cpu_time'])} "
        f"in CPU time (outputs agree to min cosine {cos['vs_clip_retrieval']:.5f}; clip-retrieval stores float16).",
        f"- ours / model forward alone: **{fmt_ratio(r_mo)}** wall, {fmt_ratio(result['ratio_vs_model_only_cpu_time'])} "
        f"in CPU time (min cosine {cos['vs_model_only']:.5f}).",
        f"- ours with `--workers 1 --decode-workers 1` (one model, {w} torch threads, decoding in a DataLoader "
        f"worker process) / model forward alone: **{fmt_ratio(r_fed)}** (min cosine {cos['one_process']:.5f}).",
    ]
    if steady:
        md.append(f"- ours once started (the 10x growth run's images beyond the 1x run's, over its time beyond it): "
                  f"**{steady['images_per_s']:.1f} images/s = {fmt_ratio(steady['ratio_vs_model_only'])}** the model "
                  f"forward alone; start-up (interpreter, torch and open_clip imports in each worker, the model "
                  f"loaded) about {steady['startup_s']:.0f} s of the whole command's wall time.")
    grow = result["growth"]
    if grow:
        md += ["", "Growth, ours alone (whole command):", "",
               "| input | images | wall s | images/s | peak RSS MB | load |", "|---|---:|---:|---:|---:|---|",
               *[f"| {g['scale']}x | {g['images']} | {g['wall_s']:.1f} | {g['images_per_s']:.1f} | "
                 f"{g['peak_rss_mb']:,.0f} | {', '.join(f'{x:.1f}' for x in g['load'])} |" for g in grow],
               "", f"Time grows as input^{result['time_growth_exponent']}, peak memory as "
               f"input^{result['rss_growth_exponent']} (1 = linear, 0 = flat)."]
    name = "bench_embed" if result["image_size"] == 256 else f"bench_embed_{result['image_size']}px"
    save(name, result, "\n".join(md))  # a rendered result keeps the machine and command it was measured with


if __name__ == "__main__":
    main()

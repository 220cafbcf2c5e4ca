"""Fast decode vs exact decode: does decoding a JPEG at a DCT scale change what the model sees?

``curate.images.open_rgb(data, size)`` decodes a JPEG at 1/2, 1/4 or 1/8 scale when that still
covers the model's resize (``--decode fast``, the default); ``--decode exact`` decodes at full
size. For each model and image set: the cosine similarity of each image's embedding fast vs
exact (min and mean), the mean absolute pixel difference of the model's input (its size, 0-255)
and how many images were decoded at a reduced scale. Then zero-shot top-1 on the demo world's
rare and held-out (reference) sets, fast vs exact.

Models (no pretrained CLIP weights can be fetched here):

- the demo mini-CLIP (trained on the demo world; 64 px input);
- open_clip ViT-B-32, random weights (seed 0): a real CLIP architecture and preprocessing
  (Resize 224 bicubic + CenterCrop), untrained.

Image sets:

- the demo world's rare split (112 px JPEGs: below twice either model's input, so decoded at
  full size in both modes: identical by construction);
- photo-like JPEGs generated at 512-2,000 px (1/f "pink" noise per channel plus smooth shapes:
  natural-image power spectra), quality 90, landscape, portrait and square;
- the photos that installed packages ship (scikit-image, scikit-learn, matplotlib sample data),
  re-encoded as JPEG q90 where stored as PNG.

    .venv/bin/python bench/decode_accuracy.py --world demo-out/world
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import load_average, save, uptime  # noqa: E402

PHOTO_SIZES = (512, 768, 1024, 1500, 2000)
ASPECTS = ((4, 3), (3, 4), (1, 1))


def photo_like(w: int, h: int, seed: int) -> bytes:
    """A photo-like JPEG: 1/f noise per channel (natural images' spectrum) with a few soft discs."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    falloff = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(w, h))
    chans = []
    for _ in range(3):
        x = np.real(np.fft.ifft2(falloff * np.exp(2j * np.pi * rng.random((h, w)))))
        chans.append((x - x.mean()) / (x.std() + 1e-9))
    arr = np.clip(np.stack(chans, -1) * 35 + rng.uniform(90, 170, 3), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    shapes = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(shapes)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * min(w, h)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)) + (150,))
    im.paste(shapes.filter(ImageFilter.GaussianBlur(min(w, h) / 200)), mask=shapes.split()[-1].filter(
        ImageFilter.GaussianBlur(min(w, h) / 200)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def photo_like_set(per_size: int) -> list[bytes]:
    out = []
    for i, side in enumerate(PHOTO_SIZES):
        for j in range(per_size):
            a, b = ASPECTS[j % len(ASPECTS)]
            w, h = (side, side * b // a) if a >= b else (side * a // b, side)
            out.append(photo_like(w, h, seed=100 * i + j))
    return out


def package_photos() -> list[bytes]:
    """Photos shipped by installed packages, as JPEG bytes (PNG ones re-encoded at q90)."""
    import matplotlib
    import skimage
    import sklearn
    from PIL import Image

    from curate.images import encode_jpeg

    roots = [Path(skimage.__file__).parent / "data", Path(sklearn.__file__).parent / "datasets" / "images",
             Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"]
    out = []
    for root in roots:
        for p in sorted(root.glob("*")):
            if p.suffix.lower() not in (".jpg", ".jpeg", ".png") or p.stat().st_size < 30_000:
                continue
            data = p.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                if min(im.size) < 256 or im.mode not in ("RGB", "L"):
                    continue
                out.append(data if im.format == "JPEG" else encode_jpeg(im))
    return out


def world_images(world: Path, split: str, limit: int) -> list[bytes]:
    from curate.shards import image_of, iter_shard, list_shards
    from curate.world import split_dir

    out = []
    for shard in list_shards(split_dir(world, split)):
        for s in iter_shard(shard):
            img = image_of(s)
            if img is not None:
                out.append(img[1])
            if len(out) >= limit:
                return out
    return out


def compare(encoder, images: list[bytes]) -> dict:
    import torch

    from curate.images import dct_scale, decode_target, open_rgb

    size = encoder.decode_size
    emb, scaled, pix = {}, 0, []
    for mode in ("fast", "exact"):
        emb[mode] = np.concatenate([encoder.encode_image_tensors(torch.stack(
            [encoder.pixels(d, mode) for d in images[i:i + 16]])) for i in range(0, len(images), 16)])
    for d in images:
        exact = open_rgb(d)
        if dct_scale(exact.width, exact.height, size) > 1:
            scaled += 1
        fast = open_rgb(d, decode_target(size, "fast"))
        pix.append(float(np.abs(view(fast, size) - view(exact, size)).mean()))
    cos = (emb["fast"] * emb["exact"]).sum(1)
    return {"images": len(images), "dct_scaled": scaled, "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
            "pixel_mad": float(np.mean(pix)), "pixel_mad_max": float(np.max(pix))}


def view(im, size: int = 224) -> np.ndarray:
    """Shortest side to ``size`` (bicubic) + centre crop: open_clip's geometry, as float pixels."""
    from PIL import Image

    s = size / min(im.size)
    im = im.resize((max(size, round(im.width * s)), max(size, round(im.height * s))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), np.float32)


def zero_shot(encoder, world: Path) -> dict:
    from curate.world import HELDOUT, RARE, split_dir
    from training.zeroshot import _from_shards, evaluate_sets

    sets = [_from_shards(split_dir(world, RARE), "rare", include_rejected=True),
            _from_shards(split_dir(world, HELDOUT), "reference", include_rejected=True)]
    objects = sorted({o for s in sets for o in s.objs})
    out = {}
    for mode in ("fast", "exact"):
        res = evaluate_sets(encoder, sets, objects, decode=mode)
        out[mode] = {name: {"object_top1": r["object_top1"], "composition_top1": r["composition_top1"],
                            "images": r["images"]} for name, r in res.items()}
    return out


def open_clip_random():
    import open_clip
    import torch

    from curate.embed.backends import OpenClipEncoder

    torch.manual_seed(0)
    model, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, device="cpu")
    return OpenClipEncoder("open_clip:ViT-B-32 (random weights, seed 0)", model, pre,
                           open_clip.get_tokenizer("ViT-B-32"), "cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, default=REPO / "demo-out" / "world")
    ap.add_argument("--per-size", type=int, default=6, help="photo-like JPEGs per size")
    ap.add_argument("--world-images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from curate.embed.backends import load_model
    from curate.world import RARE
    from training.models.mini_clip import ensure_mini_clip

    torch.set_num_threads(args.threads)
    print(uptime(), flush=True)
    sets = {"demo world rare (112 px)": world_images(args.world, RARE, args.world_images),
            f"photo-like 512-2,000 px ({args.per_size * len(PHOTO_SIZES)})": photo_like_set(args.per_size),
            "package photos (skimage, sklearn, matplotlib)": package_photos()}
    mini = load_model(f"mini:{ensure_mini_clip(args.world)}", "cpu")
    encoders = {"demo mini-CLIP (64 px)": mini, "open_clip ViT-B-32, random weights (224 px)": open_clip_random()}
    rows, result = [], {"sets": {}, "zero_shot": {}}
    for ename, enc in encoders.items():
        for sname, images in sets.items():
            r = compare(enc, images)
            result["sets"][f"{ename} / {sname}"] = r
            rows.append(f"| {ename} | {sname} | {r['images']} | {r['dct_scaled']} | {r['cos_min']:.5f} | "
                        f"{r['cos_mean']:.5f} | {r['pixel_mad']:.2f} ({r['pixel_mad_max']:.2f}) |")
            print(rows[-1], flush=True)
    zs = zero_shot(mini, args.world)
    result["zero_shot"]["demo mini-CLIP"] = zs
    zrows = [f"| {name} | {zs['fast'][name]['images']} | {100 * zs['fast'][name]['object_top1']:.2f} | "
             f"{100 * zs['exact'][name]['object_top1']:.2f} | {100 * zs['fast'][name]['composition_top1']:.2f} | "
             f"{100 * zs['exact'][name]['composition_top1']:.2f} |" for name in zs["fast"]]
    result["load_average"] = load_average()
    md = ["Fast decode (JPEG DCT scaling to the model's input size) vs exact (full-size) decode: embedding cosine "
          "similarity per image, mean |pixel difference| of the model's view at its input size (0-255; mean, max), images "
          f"decoded at a reduced scale. Load at the end: {result['load_average']}.", "",
          "| model | images | n | DCT-scaled | cosine min | cosine mean | pixel diff mean (max) |",
          "|---|---|---:|---:|---:|---:|---:|", *rows, "",
          "Zero-shot top-1 (%), demo mini-CLIP, 80 templates, fast vs exact:", "",
          "| set | images | object fast | object exact | composition fast | composition exact |",
          "|---|---:|---:|---:|---:|---:|", *zrows]
    save("decode_accuracy", result, "\n".join(md))


if __name__ == "__main__":
    main()

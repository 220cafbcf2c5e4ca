"""GPU check: TRIDENT step time with a ViT-L/14-336 tower (random weights) in bf16 at batch 128.

Measures, on the same random inputs (3 x 128 images: anchors, same-attribute and
same-object partners):

- ours, online: the frozen tower's penultimate tokens for the batch + TRIDENT (mit-states
  preset: LLaVA-shaped frozen projector 1024 -> 4096 -> 4096, dim 1024, G=6, L=12) forward,
  backward and Adam, under bf16 autocast;
- ours, cached: the same step from the token features (what ``--cache-features`` trains on);
- with ``--official DIR`` (a checkout of xud-yan/Trident, run from there, never copied in):
  its ``Trident.train_forward`` + backward on the same token features and labels (its
  per-sample Python loops included), and the ratio.

``--tiny`` runs everything small on CPU (a check that the script works where no GPU is).
Nothing here is needed by the toolkit; no GPU is ever required.

Usage: python bench/gpu_trident.py [--official /path/to/Trident] [--steps 10] [--tiny]
Writes bench/results/gpu_trident.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace as NS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402


def vit_l14_336(tiny: bool):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = (CLIPVisionConfig(hidden_size=1024, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                            image_size=56, patch_size=14) if tiny else
           CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=336, patch_size=14))
    return CLIPVisionModel(cfg).eval().requires_grad_(False), cfg.image_size


def synced(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def timed(fn, steps: int, device: str) -> float:
    for _ in range(2):
        fn()
    t = synced(device)
    for _ in range(steps):
        fn()
    return (synced(device) - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", type=Path)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    import torch
    from torch import nn

    from training.trident.config import preset
    from training.trident.model import Trident, set_vocabulary

    device = "cpu" if args.tiny else "cuda"
    batch = 2 if args.tiny else 128
    n_attr, n_obj, n_aux, word_dim = 20, 30, 40, 4096
    tower, size = vit_l14_336(args.tiny)
    tower = tower.to(device)
    torch.manual_seed(0)
    pixels = torch.randn(3 * batch, 3, size, size, device=device)
    projector = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096)).requires_grad_(False)
    cfg = preset("mit-states")
    model = Trident(cfg, n_attr + n_obj + n_aux, word_dim, 1024, 1024, projector).to(device)
    pairs = [(a, o) for a in range(n_attr) for o in range(n_obj) if (a + o) % 3]
    set_vocabulary(model, [a for a, _ in pairs], [n_attr + o for _, o in pairs],
                   [[n_attr + n_obj + (a + o + k) % n_aux for k in range(3)] for a, o in pairs], cfg.alpha)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    pair = torch.randint(0, len(pairs), (3, batch), device=device)
    lab = {"inv": torch.arange(3 * batch, device=device).reshape(3, batch), "pair": pair,
           "attr": torch.tensor([a for a, _ in pairs], device=device)[pair],
           "obj": torch.tensor([n_attr + o for _, o in pairs], device=device)[pair],
           "attr_mask": torch.ones(batch, dtype=torch.bool, device=device),
           "obj_mask": torch.ones(batch, dtype=torch.bool, device=device)}
    amp = torch.autocast(device, dtype=torch.bfloat16)

    def tokens():
        with torch.no_grad(), amp:
            h = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        return h[:, 0], h[:, 1:]

    g, loc = tokens()

    def ours(online: bool):
        gg, ll = tokens() if online else (g, loc)
        with amp:
            out = model({**lab, "g": gg, "l": ll})
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (tiny check)", "batch": batch,
           "tokens": int(loc.shape[1]), "tower_s": timed(tokens, args.steps, device),
           "ours_online_s": timed(lambda: ours(True), args.steps, device),
           "ours_cached_s": timed(lambda: ours(False), args.steps, device)}
    if args.official:
        res["official_cached_s"] = official_step(args.official, g, loc, lab, pairs, n_attr, n_obj, n_aux, device,
                                                 args.steps, batch, amp)
        res["official_over_ours"] = res["official_cached_s"] / res["ours_cached_s"]
    lines = [f"# TRIDENT step time, ViT-L/14-336 random weights, bf16, batch {batch} ({res['device']})", "",
             "| measure | seconds per step |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in res.items() if k.endswith("_s")]
    if "official_over_ours" in res:
        lines.append(f"\nOfficial / ours (cached features, forward + backward): {res['official_over_ours']:.1f}x")
    save("gpu_trident" + ("_tiny" if args.tiny else ""), res, "\n".join(lines))


def official_step(checkout: Path, g, loc, lab, pairs, n_attr, n_obj, n_aux, device, steps, batch, amp) -> float:
    """The official Trident.train_forward + backward on the same features (its code imported from ``checkout``)."""
    import torch

    sys.path.insert(0, str(checkout))
    from models.trident import Trident as Official  # noqa: PLC0415 - the official repository's module

    tmp = Path(tempfile.mkdtemp())
    words = [f"w{i}" for i in range(n_attr + n_obj + n_aux)]
    (tmp / "emb.txt").write_text("".join(f"{w} " + " ".join("0.01" for _ in range(4096)) + "\n" for w in words))
    torch.save({"0.weight": torch.randn(4096, 1024) * 0.02, "0.bias": torch.zeros(4096),
                "2.weight": torch.randn(4096, 4096) * 0.02, "2.bias": torch.zeros(4096)}, tmp / "mm.pth")
    model_cfg = NS(device=device, emb_dim=1024, img_emb_dim=1024, img_emb_drop=0.3, wordembs="llava",
                   llava_embedding_path=str(tmp / "emb.txt"), wordemb_compose="linear", wordemb_compose_dropout=0.05,
                   cosine_cls_temp=0.05, global_feature_num=6, local_feature_num=12, label_smoothing_alpha=0.09,
                   use_orthogonal_regularization_loss=True, w_loss_ortho=0.1, use_dis_loss=True, w_loss_dis=0.25,
                   Vit=NS(mm_path=str(tmp / "mm.pth"), device=device))
    cfg = NS(MODEL=model_cfg, TRAIN=NS(batch_size=batch))
    attrs, objs = words[:n_attr], words[n_attr:n_attr + n_obj]
    train_pairs = [(attrs[a], objs[o]) for a, o in pairs]
    dset = NS(attrs=attrs, objs=objs, words=words, word2idx={w: i for i, w in enumerate(words)},
              pair2idx={p: i for i, p in enumerate(train_pairs)}, train_pairs=train_pairs)
    model = Official(dset, cfg).to(device)
    inv = lab["inv"]
    feats = {"img": (loc[inv[0]], g[inv[0]]), "img1_a": (loc[inv[1]], g[inv[1]]), "img1_o": (loc[inv[2]], g[inv[2]])}
    model.feat_extractor = lambda key: feats[key]  # the cached-feature equivalent of its frozen tower
    aux = torch.tensor([[n_attr + n_obj + (a + o + k) % n_aux for k in range(3)] for a, o in pairs], device=device)
    pair = lab["pair"]
    batch_in = {"attr": lab["attr"][0], "obj": lab["obj"][0], "pair": pair[0], "aux": aux[pair[0]],
                "pair1_a": pair[1], "obj1_a": lab["obj"][1], "aux1_a": aux[pair[1]], "attr_mask_task": lab["attr_mask"],
                "pair1_o": pair[2], "attr1_o": lab["attr"][2], "aux1_o": aux[pair[2]], "obj_mask_task": lab["obj_mask"],
                "img": "img", "img1_a": "img1_a", "img1_o": "img1_o"}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=2e-4)

    def step():
        with amp:
            out = model.train_forward(batch_in)
        out["loss_total"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, steps, device)


if __name__ == "__main__":
    main()

"""The official loaders of every export format, transcribed as test oracles (their parsing and
file access; preprocessing left out), each citing its source:

* ``CompositionDataset``: ExplainableML/czsl ``data/dataset.py`` (``parse_split``,
  ``get_split_info``, ``ImageLoader``) — TRIDENT reads the same layout;
* ``FashionIQDataset`` and ``CIRRDataset``: ABaldrati/CLIP4Cir ``src/data_utils.py``, **with**
  the ``dress_type should be in ['dress', 'shirt', 'toptee']`` check;
* ``CIRCODataset``: miccunifi/CIRCO ``src/dataset.py`` plus ``get_semantic_aspects`` as
  ``src/evaluation.py`` calls it, and that script's semantic mAP@10 (``circo_semantic_map10``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image


def opened(path: Path) -> tuple[int, int]:
    with PIL.Image.open(path) as im:
        return im.convert("RGB").size


class CompositionDataset:
    """ExplainableML/czsl data/dataset.py: the split files, the .t7 metadata, images under images/."""

    def __init__(self, root: Path, phase: str, split: str = "compositional-split-natural"):
        import torch

        self.root, self.phase, self.split = root, phase, split
        self.attrs, self.objs, self.pairs, self.train_pairs, self.val_pairs, self.test_pairs = self.parse_split()
        data = torch.load(root / f"metadata_{split}.t7", weights_only=True)  # official: torch.load(path)
        self.train_data, self.val_data, self.test_data = [], [], []
        for instance in data:
            image, attr, obj, settype = instance["image"], instance["attr"], instance["obj"], instance["set"]
            curr_data = [image, attr, obj]
            if attr == "NA" or (attr, obj) not in self.pairs or settype == "NA":
                continue
            if settype == "train":
                self.train_data.append(curr_data)
            elif settype == "val":
                self.val_data.append(curr_data)
            else:
                self.test_data.append(curr_data)
        self.data = {"train": self.train_data, "val": self.val_data, "test": self.test_data}[phase]

    def parse_split(self):
        def parse_pairs(pair_list):
            with open(pair_list) as f:
                pairs = f.read().strip().split("\n")
                pairs = [line.split() for line in pairs]
                pairs = list(map(tuple, pairs))
            attrs, objs = zip(*pairs, strict=True)
            return attrs, objs, pairs

        tr_attrs, tr_objs, tr_pairs = parse_pairs(self.root / self.split / "train_pairs.txt")
        vl_attrs, vl_objs, vl_pairs = parse_pairs(self.root / self.split / "val_pairs.txt")
        ts_attrs, ts_objs, ts_pairs = parse_pairs(self.root / self.split / "test_pairs.txt")
        all_attrs = sorted(set(tr_attrs + vl_attrs + ts_attrs))
        all_objs = sorted(set(tr_objs + vl_objs + ts_objs))
        all_pairs = sorted(set(tr_pairs + vl_pairs + ts_pairs))
        return all_attrs, all_objs, all_pairs, tr_pairs, vl_pairs, ts_pairs

    def __getitem__(self, index):
        image, attr, obj = self.data[index]
        img = opened(self.root / "images" / image)  # ImageLoader: Image.open(ospj(root, img)).convert('RGB')
        return img, self.attrs.index(attr), self.objs.index(obj), self.pairs.index((attr, obj))

    def __len__(self):
        return len(self.data)


class FashionIQDataset:
    """ABaldrati/CLIP4Cir src/data_utils.py FashionIQDataset; ``base_path / 'fashionIQ_dataset'`` = root."""

    def __init__(self, root: Path, split: str, dress_types: list[str], mode: str):
        self.root, self.mode, self.dress_types, self.split = root, mode, dress_types, split
        if mode not in ["relative", "classic"]:
            raise ValueError("mode should be in ['relative', 'classic']")
        if split not in ["test", "train", "val"]:
            raise ValueError("split should be in ['test', 'train', 'val']")
        for dress_type in dress_types:
            if dress_type not in ["dress", "shirt", "toptee"]:
                raise ValueError("dress_type should be in ['dress', 'shirt', 'toptee']")
        self.triplets: list[dict] = []
        for dress_type in dress_types:
            with open(root / "captions" / f"cap.{dress_type}.{split}.json") as f:
                self.triplets.extend(json.load(f))
        self.image_names: list = []
        for dress_type in dress_types:
            with open(root / "image_splits" / f"split.{dress_type}.{split}.json") as f:
                self.image_names.extend(json.load(f))

    def __getitem__(self, index):
        if self.mode == "relative":
            image_captions = self.triplets[index]["captions"]
            reference_name = self.triplets[index]["candidate"]
            if self.split == "train":
                reference_image = opened(self.root / "images" / f"{reference_name}.jpg")
                target_name = self.triplets[index]["target"]
                target_image = opened(self.root / "images" / f"{target_name}.jpg")
                return reference_image, target_image, image_captions
            if self.split == "val":
                return reference_name, self.triplets[index]["target"], image_captions
            return reference_name, opened(self.root / "images" / f"{reference_name}.jpg"), image_captions
        image_name = self.image_names[index]
        return image_name, opened(self.root / "images" / f"{image_name}.jpg")

    def __len__(self):
        return len(self.triplets) if self.mode == "relative" else len(self.image_names)


class CIRRDataset:
    """ABaldrati/CLIP4Cir src/data_utils.py CIRRDataset; ``base_path / 'cirr_dataset'`` = root."""

    def __init__(self, root: Path, split: str, mode: str):
        if split not in ["test1", "train", "val"]:
            raise ValueError("split should be in ['test1', 'train', 'val']")
        self.root, self.split, self.mode = root, split, mode
        with open(root / "cirr" / "captions" / f"cap.rc2.{split}.json") as f:
            self.triplets = json.load(f)
        with open(root / "cirr" / "image_splits" / f"split.rc2.{split}.json") as f:
            self.name_to_relpath = json.load(f)

    def __getitem__(self, index):
        if self.mode == "relative":
            group_members = self.triplets[index]["img_set"]["members"]
            reference_name = self.triplets[index]["reference"]
            rel_caption = self.triplets[index]["caption"]
            if self.split == "train":
                reference_image = opened(self.root / self.name_to_relpath[reference_name])
                target_image = opened(self.root / self.name_to_relpath[self.triplets[index]["target_hard"]])
                return reference_image, target_image, rel_caption
            if self.split == "val":
                return reference_name, self.triplets[index]["target_hard"], rel_caption, group_members
            return self.triplets[index]["pairid"], reference_name, rel_caption, group_members
        image_name = list(self.name_to_relpath.keys())[index]
        return image_name, opened(self.root / self.name_to_relpath[image_name])

    def __len__(self):
        return len(self.triplets) if self.mode == "relative" else len(self.name_to_relpath)


class CIRCODataset:
    """miccunifi/CIRCO src/dataset.py CIRCODataset (+ get_semantic_aspects, as src/evaluation.py calls it)."""

    def __init__(self, data_path: Path, split: str, mode: str):
        if split not in ["test", "val"]:
            raise ValueError("split should be in ['test', 'val']")
        self.split, self.mode = split, mode
        with open(data_path / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json") as f:
            imgs_info = json.load(f)
        self.img_paths = [data_path / "COCO2017_unlabeled" / "unlabeled2017" / i["file_name"] for i in imgs_info["images"]]
        self.img_ids = [i["id"] for i in imgs_info["images"]]
        self.img_ids_indexes_map = {str(img_id): i for i, img_id in enumerate(self.img_ids)}
        with open(data_path / "annotations" / f"{split}.json") as f:
            self.annotations: list[dict] = json.load(f)
        self.max_num_gts = 23

    def get_target_img_ids(self, index) -> dict:
        return {"target_img_id": self.annotations[index]["target_img_id"],
                "gt_img_ids": self.annotations[index]["gt_img_ids"]}

    def get_semantic_aspects(self, index) -> list[str]:
        return self.annotations[index]["semantic_aspects"]

    def __getitem__(self, index) -> dict:
        if self.mode == "relative":
            a = self.annotations[index]
            reference_img_id = str(a["reference_img_id"])
            out = {"reference_img": opened(self.img_paths[self.img_ids_indexes_map[reference_img_id]]),
                   "relative_caption": a["relative_caption"], "shared_concept": a["shared_concept"],
                   "query_id": str(a["id"])}
            if self.split == "val":
                target_img_id = str(a["target_img_id"])
                gt_img_ids = [str(x) for x in a["gt_img_ids"]]
                out["target_img"] = opened(self.img_paths[self.img_ids_indexes_map[target_img_id]])
                out["gt_img_ids"] = gt_img_ids + [""] * (self.max_num_gts - len(gt_img_ids))
            return out
        return {"img": opened(self.img_paths[index]), "img_id": str(self.img_ids[index])}

    def __len__(self):
        return len(self.annotations) if self.mode == "relative" else len(self.img_ids)


CIRCO_ASPECTS = ["cardinality", "addition", "negation", "direct_addressing", "compare_change",
                 "comparative_statement", "statement_with_conjunction", "spatial_relations_background", "viewpoint"]


def circo_semantic_map10(ds: CIRCODataset, predictions: dict[int, list[int]]) -> dict[str, float]:
    """miccunifi/CIRCO src/evaluation.py compute_metrics: the semantic mAP@10 part."""
    from collections import defaultdict

    semantic_aps_at10 = defaultdict(list)
    for query_id, preds in predictions.items():
        gt_img_ids = ds.get_target_img_ids(int(query_id))["gt_img_ids"]
        preds = np.array(preds, dtype=int)
        ap_labels = np.isin(preds, gt_img_ids)
        precisions = np.cumsum(ap_labels, axis=0) * ap_labels
        precisions = precisions / np.arange(1, ap_labels.shape[0] + 1)
        for aspect in ds.get_semantic_aspects(int(query_id)):
            semantic_aps_at10[aspect].append(float(np.sum(precisions[:10]) / min(len(gt_img_ids), 10)))
    return {a: float(np.mean(semantic_aps_at10[a])) if semantic_aps_at10[a] else float("nan") for a in CIRCO_ASPECTS}

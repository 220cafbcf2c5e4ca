"""TRIDENT (xud-yan/Trident ``models/trident.py``), vectorised, with its known bugs fixed.

The network, as the official code builds it (names kept where they help a reader compare):

- local tokens -> projector (LLaVA's frozen ``mm_projector``, or a learned Linear) -> FAA:
  Conv1d(k=1) + BatchNorm + ReLU + Dropout1d -> L sigmoid-weighted poolings (each a
  Conv1d(dim -> 1) + Sigmoid giving token weights; feature = mean over tokens of weight x
  token). The official code keeps the L poolings in a plain Python list, so they are never
  trained nor saved: here they are an ``nn.ModuleList`` (trained, in the checkpoint), and run
  as one stacked convolution.
- global (CLS) -> (an MLP when its width is not ``dim``) -> G condition masks:
  ReLU(mask_g) * CLS.
- image embedding = Linear([mean of the L local features ; mean of the G global features]).
- pair embedding = Linear(Dropout([obj word ; attr word])); cosine classifier, logits / 0.05 in
  training over the seen pairs, raw cosines over the candidate pairs in evaluation.
- disentanglement over an image and a partner sharing its attribute (resp. object): shared /
  exclusive token weights from the concatenated token sets, fused shared features, ten
  cross-entropy terms against all words (attributes, objects, auxiliary attributes), the
  attribute terms with attribute smoothing.
- loss = pair CE (anchor, same-attribute and same-object images) + 0.1 orthogonality of the
  local and of the global templates + 0.25 disentanglement.

Fixed here: the official per-sample Python loops (pair CE, smoothing CE) are single tensor
expressions; a batch with no valid partner gives 0, not NaN (0/0).

The official step, kept by default (``TridentConfig.bn_groups`` / ``partners`` "official"): the
FAA runs once per image group (anchors, same-attribute, same-object partners), so its BatchNorm
normalises each group by its own statistics and updates its running statistics three times; an
anchor without a partner gets the dataset's last training image (``self.data[-1]``), which
enters the pair CE and the orthogonality term (not the disentanglement terms). Options:
``bn_groups="joint"`` runs the FAA once over the batch's de-duplicated images (one BatchNorm
batch, one update: other numbers in training and other running statistics in evaluation);
``partners="drop"`` leaves partnerless anchors' partners out of every term. The projection is
per token, so it runs once per distinct image in either grouping.

Attribute smoothing (per sample, over the word logits z): ``-(1-a) z[y] + logsumexp(z) -
(a/|aux|) sum_k z[aux_k]``; a pair without auxiliaries has ``a = 0`` (plain cross-entropy).

A run's network: :func:`make_model` builds it from ``RUN/run.json`` (:class:`~.run.RunSpec`),
:func:`load_weights` loads a checkpoint into it, naming a preset/backbone mismatch
(:func:`describe_state` reads what a checkpoint's shapes say).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.errors import CurateError

from .config import TridentConfig
from .run import RunSpec


def wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least (half/bf16 upcast; float64 kept, so a float64 model computes in float64)."""
    return x if x.dtype == torch.float64 else x.float()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (with a gradient path) when nothing is selected."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def smoothed_ce(logits: torch.Tensor, target: torch.Tensor, aux: torch.Tensor, aux_mask: torch.Tensor,
                alpha: torch.Tensor) -> torch.Tensor:
    """Per-sample attribute-smoothing loss; ``alpha`` [B] (0 rows are plain cross-entropy)."""
    z = wide(logits)
    n_aux = aux_mask.sum(1).clamp(min=1).to(z.dtype)
    aux_sum = (z.gather(1, aux) * aux_mask.to(z.dtype)).sum(1)
    true = z.gather(1, target[:, None])[:, 0]
    return -(1 - alpha) * true + torch.logsumexp(z, 1) - alpha / n_aux * aux_sum


def cosine_logits(x: torch.Tensor, classes: torch.Tensor, temperature: float | None) -> torch.Tensor:
    s = F.normalize(wide(x), dim=-1) @ F.normalize(wide(classes), dim=-1).T
    return s / temperature if temperature else s


def orthogonality(templates: torch.Tensor) -> torch.Tensor:
    """Per-image MSE between the templates' cosine matrix and the identity ([U])."""
    t = F.normalize(wide(templates), dim=-1)
    eye = torch.eye(t.shape[1], device=t.device, dtype=t.dtype)
    return ((t @ t.transpose(1, 2) - eye) ** 2).mean((1, 2))


def pool_tokens(x: torch.Tensor, n: int) -> torch.Tensor:
    """Average-pool a square grid of tokens [U, T, D] to ``n`` tokens (0: unchanged)."""
    side, out = math.isqrt(x.shape[1]), math.isqrt(n) if n else 0
    if not n or n >= x.shape[1] or side * side != x.shape[1] or out * out != n:
        return x
    grid = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
    return F.adaptive_avg_pool2d(grid, out).flatten(2).transpose(1, 2)


class Remain(nn.Module):
    """Token weights from a concatenated pair of token sets (official ``MLP_For_Remain``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.remain_map = nn.Sequential(nn.Linear(dim * 2, dim), nn.ReLU(), nn.Linear(dim, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.remain_map(x)


class Disentangler(nn.Module):
    """Attribute/object disentanglement over image pairs (official ``AO_DIS_MODULE``)."""

    def __init__(self, dim: int, word_dim: int, dropout: float, temperature: float):
        super().__init__()
        self.shared_weights_1 = Remain(dim)
        self.shared_weights_2 = Remain(dim)
        self.ao_2_word = nn.Linear(dim * 2, dim)
        # official MLP(word_dim, word_dim // 2, dim, dropout): Linear, BatchNorm, ReLU, Dropout, Linear
        self.word_mlp = nn.Sequential(nn.Linear(word_dim, word_dim // 2), nn.BatchNorm1d(word_dim // 2), nn.ReLU(True),
                                      nn.Dropout(dropout), nn.Linear(word_dim // 2, dim))
        self.temperature = temperature

    def attend(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        both = torch.cat([a, b], -1)
        w1, w2 = self.shared_weights_1(both), self.shared_weights_2(both)
        shared_1, shared_2 = (w1 * a).mean(1), (w2 * b).mean(1)
        diff_1, diff_2 = ((1 - w1) * a).mean(1), ((1 - w2) * b).mean(1)
        return self.ao_2_word(torch.cat([shared_1, shared_2], -1)), shared_1, shared_2, diff_1, diff_2

    def forward(self, anchor: torch.Tensor, same_attr: torch.Tensor, same_obj: torch.Tensor,
                words: torch.Tensor, lab: dict[str, torch.Tensor], smooth: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.word_mlp(words)
        t = self.temperature

        def ce(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(cosine_logits(x, w, t), y, reduction="none")

        def ls(x: torch.Tensor, y: torch.Tensor, who: str) -> torch.Tensor:
            return smoothed_ce(cosine_logits(x, w, t), y, smooth[f"aux_{who}"], smooth[f"aux_mask_{who}"],
                               smooth[f"alpha_{who}"])

        attr, obj, am, om = lab["attr"], lab["obj"], lab["attr_mask"], lab["obj_mask"]
        # pair sharing the attribute: shared part -> attribute, exclusive parts -> objects
        sh, s1, s2, d1, d2 = self.attend(anchor, same_attr)
        terms_a = [ce(sh, attr[0]), ls(s1, attr[0], "anchor"), ls(s2, attr[0], "attr"), ce(d1, obj[0]), ce(d2, obj[1])]
        # pair sharing the object: shared part -> object, exclusive parts -> attributes
        sh, s1, s2, d1, d2 = self.attend(anchor, same_obj)
        terms_o = [ce(sh, obj[0]), ce(s1, obj[0]), ce(s2, obj[0]), ls(d1, attr[0], "anchor"), ls(d2, attr[2], "obj")]
        total = sum(masked_mean(v, am) for v in terms_a) + sum(masked_mean(v, om) for v in terms_o)
        return total / 10.0


class Trident(nn.Module):
    def __init__(self, cfg: TridentConfig, n_words: int, word_dim: int, token_dim: int, global_dim: int,
                 projector: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.word_embedder = nn.Embedding(n_words, word_dim)
        self.compose = nn.Sequential(nn.Dropout(cfg.compose_dropout), nn.Linear(word_dim * 2, dim))
        self._frozen = [projector.eval()] if projector is not None else []
        if projector is not None:
            proj_dim = projector[-1].out_features
            if projector[0].in_features != token_dim:
                from curate.errors import CurateError

                raise CurateError(f"the projector takes {projector[0].in_features}-d tokens, the backbone gives "
                                  f"{token_dim}-d", fix="use the projector made for this vision tower (LLaVA-1.5: "
                                                        "ViT-L/14-336), or none")
            self.project = None
        else:
            proj_dim = cfg.proj_dim
            self.project = nn.Linear(token_dim, proj_dim)
        self.faa = nn.Sequential(nn.Conv1d(proj_dim, dim, 1), nn.BatchNorm1d(dim), nn.ReLU(),
                                 *([nn.Dropout1d(cfg.faa_dropout)] if cfg.faa_dropout > 0 else []))
        self.local_agg = nn.ModuleList(nn.Sequential(nn.Conv1d(dim, 1, 1), nn.Sigmoid())
                                       for _ in range(cfg.local_poolings))
        self.global_cond_masks = nn.Embedding(cfg.global_masks, dim)
        self.global_pre = None
        if global_dim != dim:  # official: an MLP when the CLS width is not emb_dim
            self.global_pre = nn.Sequential(nn.Dropout(cfg.compose_dropout), nn.Linear(global_dim, dim), nn.ReLU(True),
                                            nn.Linear(dim, dim))
        self.image_embedder = nn.Linear(dim * 2, dim)
        self.dis = Disentangler(dim, word_dim, cfg.compose_dropout, cfg.temperature)
        add_vocabulary_buffers(self)

    def checkpoint_metadata(self) -> dict[str, str]:
        """Written into every checkpoint (``training.loop.save_model``): how its BatchNorm statistics
        and losses were made, checked by :func:`load_weights`."""
        return {"bn_groups": self.cfg.bn_groups, "partners": self.cfg.partners}

    def _apply(self, fn: Any, recurse: bool = True) -> Trident:
        super()._apply(fn, recurse)
        for m in self._frozen:  # the frozen projector follows .to(device) but stays out of state_dict
            m._apply(fn)
        return self

    # -- features ------------------------------------------------------------------------------
    def projected(self, loc: torch.Tensor) -> torch.Tensor:
        """Local tokens, pooled and projected, channels first ([U, proj_dim, T]): the FAA's input."""
        x = pool_tokens(wide(loc), self.cfg.local_tokens)
        if self.project is not None:
            x = self.project(x)
        else:
            with torch.no_grad():
                x = self._frozen[0](x)
        return x.transpose(1, 2)

    def local_templates(self, x: torch.Tensor) -> torch.Tensor:
        """The L sigmoid-weighted poolings of FAA features [U, dim, T] -> [U, L, dim]."""
        weight = torch.cat([m[0].weight for m in self.local_agg])         # [L, dim, 1]
        bias = torch.cat([m[0].bias for m in self.local_agg])
        w = torch.sigmoid(F.conv1d(x, weight, bias))                      # [U, L, T]
        return torch.einsum("bct,blt->blc", x, w) / x.shape[-1]

    def global_templates(self, g: torch.Tensor) -> torch.Tensor:
        gf = wide(g)
        if self.global_pre is not None:
            gf = self.global_pre(gf)
        return gf[:, None, :] * F.relu(self.global_cond_masks.weight)[None]

    def templates(self, g: torch.Tensor, loc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local templates [U, L, dim], global templates [U, G, dim]) of token features."""
        return self.local_templates(self.faa(self.projected(loc))), self.global_templates(g)

    def group_templates(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Templates of the batch's three image groups, rows in ``inv`` order ([3B, L|G, dim]).

        ``bn_groups`` official: the FAA (its BatchNorm) runs once per group, anchors, same-attribute
        then same-object partners, as ``train_forward`` does (each group normalised by its own
        statistics, the running statistics updated three times, repeated images counted each time);
        joint: once over the batch's de-duplicated images."""
        inv = batch["inv"]
        if self.cfg.bn_groups == "joint":
            local, glob = self.templates(batch["g"], batch["l"])
            return local[inv.reshape(-1)], glob[inv.reshape(-1)]
        x = self.projected(batch["l"])                                    # per token: gathering commutes
        local = torch.cat([self.local_templates(self.faa(x[inv[k]])) for k in range(3)])
        return local, self.global_templates(batch["g"])[inv.reshape(-1)]

    def embed(self, local: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        return self.image_embedder(torch.cat([local.mean(1), glob.mean(1)], -1))

    def embed_images(self, g: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        return self.embed(*self.templates(g, loc))

    def pair_embeddings(self, attr_word: torch.Tensor, obj_word: torch.Tensor) -> torch.Tensor:
        w = self.word_embedder.weight
        return self.compose(torch.cat([w[obj_word], w[attr_word]], -1))

    # -- training --------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Training losses of a batch (see ``features.plan_labels`` for its fields).

        ``partners`` official: every partner (an anchor's fallback one too) is in the pair and
        orthogonality losses; drop: partners that share nothing with their anchor are left out."""
        concept = self.pair_embeddings(self.train_attr_word, self.train_obj_word)  # first, as the official
        local, glob = self.group_templates(batch)                        # [3B, ...] anchors, attr, obj
        b = batch["inv"].shape[1]
        ones = torch.ones_like(batch["attr_mask"])
        keep = (ones, ones) if self.cfg.partners == "official" else (batch["attr_mask"], batch["obj_mask"])
        valid = torch.cat([ones, *keep])
        logits = cosine_logits(self.embed(local, glob), concept, self.cfg.temperature)   # [3B, S]
        ce = F.cross_entropy(logits, batch["pair"].reshape(-1), reduction="none")
        pair_loss = masked_mean(ce, valid)
        ortho = masked_mean(orthogonality(local) + orthogonality(glob), valid) / 2
        tokens = torch.cat([local, glob], 1).reshape(3, b, -1, local.shape[-1])
        lab = {k: batch[k] for k in ("attr", "obj", "attr_mask", "obj_mask")}
        pair = batch["pair"]
        smooth = {}
        for who, row in (("anchor", 0), ("attr", 1), ("obj", 2)):
            smooth[f"aux_{who}"] = self.aux_words[pair[row]]
            smooth[f"aux_mask_{who}"] = self.aux_mask[pair[row]]
            smooth[f"alpha_{who}"] = self.aux_alpha[pair[row]]
        dis = self.dis(tokens[0], tokens[1], tokens[2], self.word_embedder.weight, lab, smooth)
        loss = pair_loss + self.cfg.w_ortho * ortho + self.cfg.w_dis * dis
        return {"loss": loss, "pair_loss": pair_loss.detach(), "ortho_loss": ortho.detach(), "dis_loss": dis.detach()}


class LinearComposition(nn.Module):
    """Baseline: a linear map of the frozen features ([CLS ; mean token]) and a linear
    composition of the two word vectors, cosine classifier over the seen pairs."""

    def __init__(self, cfg: TridentConfig, n_words: int, word_dim: int, token_dim: int, global_dim: int):
        super().__init__()
        self.cfg = cfg
        self.word_embedder = nn.Embedding(n_words, word_dim)
        self.compose = nn.Linear(word_dim * 2, cfg.dim)
        self.image_embedder = nn.Linear(global_dim + token_dim, cfg.dim)
        add_vocabulary_buffers(self)

    def embed_images(self, g: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        return self.image_embedder(torch.cat([g.float(), loc.float().mean(1)], -1))

    def pair_embeddings(self, attr_word: torch.Tensor, obj_word: torch.Tensor) -> torch.Tensor:
        w = self.word_embedder.weight
        return self.compose(torch.cat([w[obj_word], w[attr_word]], -1))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        inv = batch["inv"][0]
        concept = self.pair_embeddings(self.train_attr_word, self.train_obj_word)
        logits = cosine_logits(self.embed_images(batch["g"][inv], batch["l"][inv]), concept, self.cfg.temperature)
        loss = F.cross_entropy(logits, batch["pair"][0])
        return {"loss": loss, "pair_loss": loss.detach()}


def add_vocabulary_buffers(model: nn.Module) -> None:
    """Training-pair words and auxiliary attributes: non-persistent buffers (data, not weights),
    set by :func:`set_vocabulary`; they follow ``.to(device)`` and DDP's buffer broadcast."""
    for name, dtype in (("train_attr_word", torch.long), ("train_obj_word", torch.long), ("aux_words", torch.long),
                        ("aux_mask", torch.bool), ("aux_alpha", torch.float32)):
        model.register_buffer(name, torch.zeros(0, dtype=dtype), persistent=False)


def set_vocabulary(model: nn.Module, train_attr_word: Any, train_obj_word: Any, aux: list[list[int]],
                   alpha: float) -> None:
    """Word indices of the training pairs and of their auxiliary attributes (``aux[i]`` may be empty:
    plain cross-entropy for that pair)."""
    k = max((len(a) for a in aux), default=0) or 1
    words = torch.zeros(len(aux), k, dtype=torch.long)
    mask = torch.zeros(len(aux), k, dtype=torch.bool)
    for i, a in enumerate(aux):
        words[i, :len(a)] = torch.as_tensor(a, dtype=torch.long)
        mask[i, :len(a)] = True
    device = next(model.parameters()).device
    model.train_attr_word = torch.as_tensor(train_attr_word, dtype=torch.long, device=device)
    model.train_obj_word = torch.as_tensor(train_obj_word, dtype=torch.long, device=device)
    model.aux_words, model.aux_mask = words.to(device), mask.to(device)
    model.aux_alpha = (mask.any(1).float() * alpha).to(device)


def build_model(cfg: TridentConfig, n_words: int, word_dim: int, token_dim: int, global_dim: int,
                projector: nn.Module | None = None) -> nn.Module:
    if cfg.model == "linear":
        return LinearComposition(cfg, n_words, word_dim, token_dim, global_dim)
    return Trident(cfg, n_words, word_dim, token_dim, global_dim, projector)


# -- a run's model: made from its run.json, loaded from its checkpoints ---------------------------
def make_model(spec: RunSpec, device: str, word_vectors: np.ndarray | None = None) -> Any:
    """The network of ``spec`` (word table from ``word_vectors``, or zeros to be loaded)."""
    from .backbone import load_projector

    projector = load_projector(spec.projector) if spec.projector else None
    d = spec.dims
    model = build_model(spec.config, len(spec.words), d["word_dim"], d["local_dim"], d["global_dim"], projector)
    if word_vectors is not None:
        model.word_embedder.weight.data.copy_(torch.from_numpy(word_vectors))
    model.to(device)
    word = {w: i for i, w in reversed(list(enumerate(spec.words)))}
    n_attrs = len(spec.attrs)
    attr_w = [spec.attrs.index(a) for a, _ in spec.train_pairs]
    obj_w = [n_attrs + spec.objs.index(o) for _, o in spec.train_pairs]
    aux = [[word[w] for w in spec.aux.get(f"{a} {o}", []) if w in word] for a, o in spec.train_pairs]
    set_vocabulary(model, attr_w, obj_w, aux, spec.config.alpha)
    return model


def load_weights(model: Any, path: Path, spec: RunSpec) -> None:
    """Load a checkpoint, naming the preset/backbone mismatch when it does not fit."""
    from ..loop import load_model_weights

    want = (f"preset {spec.config.preset!r} ({spec.config.model}, G={spec.config.global_masks}, "
            f"L={spec.config.local_poolings}, dim={spec.config.dim}) on backbone {spec.backbone!r} "
            f"({spec.dims.get('local_dim')}-d tokens)")
    _check_training_step(path, spec)
    try:
        load_model_weights(model, path, want)
    except CurateError as e:
        if "another model" not in e.what:
            raise
        raise CurateError(f"checkpoint does not fit this run: it holds {describe_state(path)}; the run is {want}",
                          where=str(path), fix="evaluate it with the run folder it was trained in, or retrain "
                                               "with that preset and backbone") from e


def checkpoint_step(path: Path) -> dict[str, str]:
    """How a TRIDENT checkpoint was trained (its metadata); one written before the options
    existed holds none and was trained with the joint BatchNorm batch and dropped partners."""
    from ..loop import model_metadata
    from .config import BEFORE_OPTIONS

    try:
        meta = model_metadata(path)
    except Exception:  # noqa: BLE001 - unreadable: load_model_weights names it
        return {}
    return {k: meta.get(k, v) for k, v in BEFORE_OPTIONS.items()}


def _check_training_step(path: Path, spec: RunSpec) -> None:
    """Refuse a checkpoint whose BatchNorm grouping is not the run's: its running statistics were
    made by another training step, so it would be reported as what it is not."""
    if spec.config.model != "trident":
        return
    got = checkpoint_step(path).get("bn_groups")
    if got and got != spec.config.bn_groups:
        raise CurateError(f"checkpoint was trained with --bn-groups {got}, the run says {spec.config.bn_groups} "
                          f"(its BatchNorm running statistics come from the {got} training step)", where=str(path),
                          fix="evaluate it with the run folder it was trained in (its run.json names its "
                              "grouping), or retrain with the grouping you want to report")


def describe_state(path: Path) -> str:
    """What a model checkpoint's tensor shapes say about the run that wrote it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception:  # noqa: BLE001 - the caller already reports the file as unreadable
        return "unreadable"
    parts = []
    if "global_cond_masks.weight" in shapes:
        g, dim = shapes["global_cond_masks.weight"]
        n_local = len({k.split(".")[1] for k in shapes if k.startswith("local_agg.")})
        parts.append(f"TRIDENT G={g}, L={n_local}, dim={dim}")
    elif "image_embedder.weight" in shapes:
        parts.append("the linear baseline")
    if "project.weight" in shapes:
        parts.append(f"backbone tokens {shapes['project.weight'][1]}-d")
    if "word_embedder.weight" in shapes:
        n, d = shapes["word_embedder.weight"]
        parts.append(f"{n} words x {d}-d word embeddings")
    return ", ".join(parts) or "no TRIDENT tensors"


def word_vectors_of(model: Any, spec: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    """The model's (attribute, object) word-embedding rows, as float32 arrays."""
    w = model.word_embedder.weight.detach().float().cpu().numpy()
    n = len(spec.attrs)
    return w[:n], w[n:n + len(spec.objs)]

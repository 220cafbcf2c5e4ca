"""TRIDENT (Yan et al., arXiv 2411.12584) for compositional zero-shot learning, and its data.

- ``data``: CZSL datasets in the standard layout (MIT-States, C-GQA, VAW-CZSL, UT-Zappos,
  ``curate build --export czsl``) and curate dataset folders, as one :class:`~.data.CZSLData`;
  auxiliary attributes (``aux_label.jsonl``); same-attribute / same-object partner sampling.
- ``backbone``: the frozen CLIP image tower (token features through ``Encoder.tokens``) and
  the optional frozen LLaVA ``mm_projector``.
- ``features``: the token features of a dataset's images (the ``training.data.features``
  cache, built from a ``training.data.images.ImageStore``, or the backbone online) and the
  per-epoch batch plans.
- ``run``: ``RUN/run.json``, what a run was trained with (resume and evaluation check it).
- ``words``: word embeddings (GloVe-style files, transformers models, MiniLM, GGUF via llama.cpp).
- ``model``: TRIDENT itself (vectorised, known bugs of the official code fixed), the linear
  composition baseline, and a run's network made from its ``run.json`` / loaded from checkpoints.
- ``feasibility``: open-world feasibility scores (CompCos) from caption co-occurrence or words.
- ``evaluate``: a split's image embeddings, scores over candidate pairs ->
  ``training.metrics.czsl.evaluate_czsl``; ``results``: a run's final numbers, ``curate eval czsl``.
- ``train``: ``curate train trident`` through ``training.loop.fit``; ``report``: report.md + PNG.
"""

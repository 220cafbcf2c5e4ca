"""TRIDENT (Yan et al., arXiv 2411.12584) for compositional zero-shot learning, and its data.

- ``data``: CZSL datasets in the standard layout (MIT-States, C-GQA, VAW-CZSL, UT-Zappos,
  ``curate build --export czsl``) and curate dataset folders, as one :class:`~.data.CZSLData`;
  auxiliary attributes (``aux_label.jsonl``); same-attribute / same-object partner sampling.
- ``backbone``: the frozen CLIP image tower (token features through ``Encoder.tokens``) and
  the optional frozen LLaVA ``mm_projector``.
- ``features``: the feature cache (fp16 ``.npy`` chunks) and the per-epoch batch plans.
- ``words``: word embeddings (GloVe-style files, transformers models, MiniLM, GGUF via llama.cpp).
- ``model``: TRIDENT itself (vectorised, known bugs of the official code fixed) and the linear
  composition baseline.
- ``feasibility``: open-world feasibility scores (CompCos) from caption co-occurrence or words.
- ``evaluate``: scores over candidate pairs -> ``training.metrics.czsl.evaluate_czsl``.
- ``train``: ``curate train trident`` through ``training.loop.fit``; ``report``: report.md + PNG.
"""

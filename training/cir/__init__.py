"""Composed image retrieval (CIR): train a model on triplets, score it as the benchmarks score.

- :mod:`.data`: one shape (queries, gallery, image source) for our triplet folders and the
  official CIRR / CIRCO / FashionIQ / GeneCIS layouts; bad queries skipped and counted.
- :mod:`.features`: frozen-backbone features, from ``curate embed`` folders or encoded once.
- :mod:`.models`: CLIP4Cir's Combiner and the zero-shot baselines (image, text, sum).
- :mod:`.mllm`: the InstructCIR-style MLLM embedder (a local LLaVA-style transformers folder);
  :mod:`.random_llava` writes a tiny random one for offline runs.
- :mod:`.train`: ``curate train cir`` through ``training.loop.fit``.
- :mod:`.evaluate`, :mod:`.retrieval`: the benchmarks' metrics (``training.metrics.cir``) at any
  gallery size (faiss top-k + reduced blocks), and the CIRR / CIRCO test-server files.
- :mod:`.retrievers`, :mod:`.benchmark`: runs and baselines as retrievers; ``curate eval cir``.
- :mod:`.report`, :mod:`.cli`: report.md + recall-vs-K plot, the commands.
"""

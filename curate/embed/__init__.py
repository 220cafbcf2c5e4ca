"""Embedding models and embedding folders.

- ``backends.load_model(spec, device="auto") -> Encoder`` (``encode_images``, ``encode_texts``,
  ``dim``, ``spec``) for ``open_clip:ARCH/TAG``, ``open_clip:ARCH//ckpt.pt``, ``hf:FOLDER``, ``mini:FOLDER``.
- ``stage.embed_shards(shards, out, EmbedConfig(model=...))``: ``curate embed``, clip-retrieval layout.
- ``store.read_embeddings(folder, kind="img") -> (keys, matrix)``; ``store.iter_chunks`` for big folders.
- ``mini_clip.ensure_mini_clip(world_dir) -> Path``: the demo model, trained once and cached.
- ``zeroshot``: the 80 OpenAI ImageNet templates, class text embeddings, top-k accuracy.

Submodules are imported on use: importing this package stays cheap (no torch).
"""

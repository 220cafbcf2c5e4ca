"""TRIDENT auxiliary attributes: three LLM-chosen adjectives per attribute-object pair.

``curate attributes`` asks an LLM (``curate.llm``) with TRIDENT's wording, parses and
validates the answer, retries with a stricter prompt, falls back to sentence-embedding
neighbours among a bundled list of visual adjectives, and writes ``aux_label.jsonl`` in the
format TRIDENT's ``dataset.py`` reads plus ``aux_attributes.parquet`` with provenance.
"""

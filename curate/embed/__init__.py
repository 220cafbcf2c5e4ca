"""Embedding backends (open_clip, HF CLIP, demo mini-CLIP) and the clip-retrieval folder layout."""

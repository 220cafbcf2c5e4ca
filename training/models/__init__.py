"""Models the trainers build: the demo mini-CLIP (TRIDENT and the CIR models have their own packages)."""

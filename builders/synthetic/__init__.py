"""The offline demo world: procedural attribute-object images, a LAION-like caption corpus
with a known co-occurrence structure, an image pool servable over local HTTP, and
captioned training shards for the demo mini-CLIP.

Entry points: :func:`builders.synthetic.world.ensure_world`, :func:`builders.synthetic.render.render`,
:class:`builders.synthetic.generator.DemoGenerator`, :func:`builders.synthetic.httpserver.serve_folder`
and the ``curate demo`` command (``builders.synthetic.cli``).
"""

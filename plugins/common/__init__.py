"""Building blocks shared by the network plugins (Wan2.1, Cosmos-Predict2): numerics-aware layers, 3-D
rotary embeddings in real arithmetic, input checks, the recipe-config rules (``network_config``),
checkpoint key renaming (``keys``), reading (``loading``) and writing (``export``), and diffusers interop.

Not a plugin area: it registers no components, it is imported by the areas that do.
"""

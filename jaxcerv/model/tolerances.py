"""When a patch-weight map is flat: one definition for the regulator (Eq. 6 normalises a flat
map to 0) and the metrics that count flat heatmaps. Plain numbers, no JAX, so the evaluation and
the report can import them without loading it."""

# A map whose range is within FLAT_REL of its magnitude (plus FLAT_ABS) is flat: float32 rounding,
# not contrast.
FLAT_REL, FLAT_ABS = 1e-6, 1e-12

"""Numbers from one capture (phases, layers, op categories, top ops, compiles, roofline) and
the comparison of two."""

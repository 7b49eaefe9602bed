"""The engine's backends, one folder each (torch_xla/, jax/), behind one contract (base.py) and
one registry (registry.py). Importing this package loads no backend."""

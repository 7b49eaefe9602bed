"""The JAX backend: the engine's runner as a JAX program (jitted per static shape, donated KV
cache, named scopes per module, `jax.sharding` tensor parallelism). `runner.JaxRunner` is its
entry point; nothing outside this package imports jax for the engine."""

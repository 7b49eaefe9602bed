"""The step programs as compiled executables, one per shape, loaded without tracing on a warm
start.

`jax.jit` traces the Python model for every new shape before it can even look JAX's persistent
compilation cache up, so on a warm start most of the warm-up would be tracing and lowering
(about a second for the default model's few shapes; it grows with layers and buckets). Each
step program here is compiled ahead of time per shape (`lower(...).compile()`), and with a
cache dir also saved as a serialized executable under a digest
of everything that decides what tracing would produce: the function, its static arguments,
every argument's shape, dtype and sharding, the model config, the engine's source, the
jax/jaxlib versions, the devices and XLA's flags. A later start with the same digest loads the
executable and never traces. Calling an executable with a shape it was not built for is the
same new-shape event as a jit recompile: counted, and refused by strict_compiles.

The files are pickles, trusted as JAX's own cache is: only this user's cache dir is read.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import sys
import time
from typing import Callable

import jax

from . import compile as jcompile

log = logging.getLogger(__name__)
SUBDIR = "tpu_engine-executables"
_PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tpu_engine/


def _source_digest() -> str:
    """The engine's Python source: an edit to the model changes what tracing produces."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(_PACKAGE):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(root, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def context(*facts) -> str:
    """What every program of this runner shares: the given facts (model config, dtype), the
    source, versions, devices and flags."""
    import jaxlib
    devices = jax.devices()
    parts = [*map(repr, facts), _source_digest(), jax.__version__, jaxlib.__version__, jax.default_backend(),
             [d.device_kind for d in devices], len(devices), os.environ.get("XLA_FLAGS", ""),
             os.environ.get("LIBTPU_INIT_ARGS", ""), jax.config.jax_enable_x64,
             str(jax.config.jax_default_matmul_precision)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class ProgramStore:
    """Serialized executables under <cache dir>/tpu_engine-executables/<digest>.exe. A file that
    cannot be read or loaded is replaced; a write that fails (full disk, read-only dir) is said
    once and the run goes on without it."""

    def __init__(self, cache_dir: str, context_digest: str, devices):
        self.dir = os.path.join(cache_dir, SUBDIR)
        self.context, self.devices = context_digest, list(devices)
        self._warned = False

    def digest(self, name: str, args: tuple, static: dict) -> str:
        leaves, tree = jax.tree_util.tree_flatten(args)
        avals = [(tuple(x.shape), str(x.dtype), str(getattr(x, "sharding", ""))) for x in leaves]
        return hashlib.sha256(repr((self.context, name, sorted(static.items()), str(tree), avals)).encode()).hexdigest()

    def _path(self, digest: str) -> str:
        return os.path.join(self.dir, digest + ".exe")

    def load(self, digest: str):
        path = self._path(digest)
        if not os.path.isfile(path):
            return None
        from jax.experimental.serialize_executable import deserialize_and_load
        try:
            with open(path, "rb") as f:
                payload, in_tree, out_tree = pickle.load(f)
            return deserialize_and_load(payload, in_tree, out_tree, execution_devices=self.devices)
        except Exception as e:  # a torn or foreign file: compile again and replace it
            log.warning("ignoring unreadable cached executable %s (%s)", path, e)
            return None

    def save(self, digest: str, compiled) -> None:
        from jax.experimental.serialize_executable import serialize
        path = self._path(digest)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(self.dir, exist_ok=True)
            with open(tmp, "wb") as f:
                pickle.dump(serialize(compiled), f)
            os.replace(tmp, path)
        except (OSError, ValueError, TypeError, pickle.PicklingError) as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if not self._warned:
                print(f"warning: cannot save compiled programs to {self.dir} ({e}); "
                      "the next start compiles them again.", file=sys.stderr)
                self._warned = True


class StepProgram:
    """One jitted step function as executables by shape: `program(*args, **static)`. Only the
    array arguments' shapes and the static arguments tell shapes apart, because the others
    (parameters, KV cache) are fixed for the runner's life."""

    def __init__(self, name: str, jitted: Callable, store: ProgramStore | None):
        self.name, self.jitted, self.store = name, jitted, store
        self._executables: dict[tuple, object] = {}

    def __call__(self, *args, **static):
        key = (tuple(static.items()), tuple(a.shape for a in args if hasattr(a, "shape")))
        exe = self._executables.get(key)
        if exe is None:
            exe = self._executables[key] = self._build(args, static)
        return exe(*args)

    def _build(self, args: tuple, static: dict):
        t0 = time.perf_counter()
        digest = self.store.digest(self.name, args, static) if self.store else None
        exe = self.store.load(digest) if digest else None
        if exe is not None:
            jcompile.record_load(time.perf_counter() - t0)
            return exe
        exe = self.jitted.lower(*args, **static).compile()
        if digest:
            jcompile.record_miss()
            self.store.save(digest, exe)
        return exe

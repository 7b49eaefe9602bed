"""Module scopes for dynamo-compiled graphs, so profiles attribute op time per layer.

In lazy mode `xp.Trace(name)` pushes a torch_xla IR scope while a module's ops are traced, and
with XLA_HLO_DEBUG=1 the scope lands in each HLO op's metadata op_name. Under dynamo the model's
Python never runs with XLA tensors: dynamo captures an FX graph, and the openxla bridge traces
that graph ONCE on XLA tensors (lazily) to build the HLO, then replays the cached executable.
Scopes only have to be active during that one trace. Dynamo records each node's module path in
`node.meta["nn_module_stack"]` and AOTAutograd keeps it on the aten graph, so this backend wraps
every node's target in a function that pushes that path's scope around the call, then hands the
graph to openxla unchanged otherwise. Replays call the cached executable, not the graph's Python,
so they cost exactly what openxla costs, and the set of graphs is the same (no new nodes).
"""
from __future__ import annotations

import functools
import operator
import os
import re

import torch

_ROOT = re.compile(r"^L\['[^']*'\]")              # the compiled function's argument, e.g. L['model']
_INDEX = re.compile(r"(?:\._modules)?\[['\"]?([^'\"\]]+)['\"]?\]")  # ._modules['x'], ['x'], [3]


def module_scope(path: str) -> str:
    """`L['model']._modules['model']._modules['layers']._modules['3'].self_attn.q_proj`
    -> `model.layers.3.self_attn`: the HF-style name, cut to the granularity the eager path
    scopes (one level below a numbered layer, else two levels: `model.norm`, `lm_head`)."""
    parts = [p for p in _INDEX.sub(r".\1", _ROOT.sub("", path)).split(".") if p]
    numbered = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[:numbered[-1] + 2] if numbered else parts[:2])


# Code outside any module that eager mode still scopes by name: named after the file it runs in.
_FILE_SCOPES = {"sampler.py": "sampler"}
_FRAME = re.compile(r'File "([^"]+)"')


def _file_scope(node: torch.fx.Node) -> str:
    frames = _FRAME.findall(node.meta.get("stack_trace") or "")
    return _FILE_SCOPES.get(os.path.basename(frames[-1]), "") if frames else ""


def _node_scopes(graph: torch.fx.Graph) -> dict[torch.fx.Node, str]:
    """Scope per call node. An op outside every submodule whose computed inputs are all scoped
    (the residual `x + self_attn(h)`, the functionalised KV-cache copy_) takes the scope of its
    latest input: in eager it sits inside that module's `with scope(...)`. Ops that also read
    unscoped values (masks, the last-row gather) stay unscoped, as in eager."""
    scopes: dict[torch.fx.Node, str] = {}
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        stack = node.meta.get("nn_module_stack") or {}
        name = module_scope(list(stack.values())[-1][0]) if stack else _file_scope(node)
        if not name:
            computed = [a for a in node.all_input_nodes if a.op == "call_function"]
            if computed and all(a in scopes for a in computed):
                name = scopes[max(computed, key=order.get)]
        if name:
            scopes[node] = name
    return scopes


def _scoped(target, name: str):
    import torch_xla
    pusher = torch_xla._XLAC.profiler.scope_pusher

    @functools.wraps(target, assigned=("__name__", "__qualname__", "__doc__"))
    def call(*args, **kwargs):
        scope = pusher(name)   # pushed now, popped when released (as xp.Trace does)
        try:
            return target(*args, **kwargs)
        finally:
            del scope
    call.__module__ = __name__  # fx codegen must bind it as a global, not import it from torch
    return call


def _fw_compiler(gm: torch.fx.GraphModule, example_inputs):
    from torch._dynamo.backends.torchxla import openxla_eval_boxed

    from torch_xla._dynamo.dynamo_bridge import XLAConstructorMoverPass
    # The bridge runs this pass itself, but it only recognises aten constructors by target, so
    # run it before the targets are wrapped (it is idempotent).
    XLAConstructorMoverPass()(gm.graph)
    for node, name in _node_scopes(gm.graph).items():
        if node.target is not operator.getitem:  # the bridge's partitioner tests for getitem
            node.target = _scoped(node.target, name)
    gm.recompile()
    return openxla_eval_boxed(gm, example_inputs)


def compile_with_scopes(fn):
    """torch.compile for one step function, once per static shape: openxla's compiler behind AOTAutograd
    (as the registered "openxla" backend), module scopes in the HLO metadata."""
    import torch._dynamo as dynamo
    from torch._dynamo.backends.common import aot_autograd
    for name in ("recompile_limit", "cache_size_limit"):  # one entry per bucket shape
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, 4096)
    dynamo.config.accumulated_cache_size_limit = 1 << 16
    backend = aot_autograd(fw_compiler=_fw_compiler)
    return torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)

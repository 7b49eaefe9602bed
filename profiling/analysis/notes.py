"""Notes that are true for the capture at hand: what it lacks, and how the engine that made it
would add it. The framework is read from the capture itself (program and op names, its lines)
or from our run record, so a JAX capture is never told about XLA_HLO_DEBUG."""
from __future__ import annotations

from tpu_engine.backends import registry

from ..trace.categories import UNSCOPED
from ..trace.chrome_json import XPROF_EVENT_CAP
from .analysis import Analysis
from .phases import backward_program

JAX, TORCH, TENSORFLOW = "JAX", "PyTorch/XLA", "TensorFlow"  # frameworks, not our backends' names
UNSCOPED_NOTE_PCT = 5.0  # below this share of op time, missing scopes are not worth a note


def framework(a: Analysis) -> str:
    """JAX, TORCH or TENSORFLOW (the framework that built the programs), or "" (unknown),
    read from the capture itself (program and op names, its device lines)."""
    cap = a.capture
    modules = {r.module for r in cap.runs} | {k.rsplit("(", 1)[0] for k in cap.modules} if cap else \
        {o.module for o in a.ops}
    if cap and any(line.startswith("TensorFlow") for line in cap.device_lines) and not a.ops:
        return TENSORFLOW
    if any(o.framework_op.startswith("aten__") for o in a.ops[:2000]) or any("SyncTensorsGraph" in m for m in modules):
        return TORCH
    if any(m.startswith("jit_") or m.startswith("jit(") for m in modules):
        return JAX
    return ""


def training_program(a: Analysis) -> str:
    """The program that runs a backward pass (a training step), '' if none does."""
    return backward_program(a.capture.modules) if a.capture else ""


def _why_unscoped(a: Analysis) -> str:
    if a.record and a.record.backend in registry.names():  # our engine's capture: its backend says
        return registry.get(a.record.backend).no_scopes_why
    fw = framework(a)
    if fw == JAX:
        return ("its JAX program names no `jax.named_scope` around them (Flax linen modules get one each; NNX "
                "modules and plain functions do not): wrap the model's modules in `jax.named_scope`")
    if fw == TORCH:
        return "torch_xla records module names only with XLA_HLO_DEBUG=1 set as the process starts " \
               "(profiling.py sets it unless told otherwise)"
    return "the capture's ops carry no scope metadata"


def notes(a: Analysis) -> list[str]:
    out = []
    fw = framework(a)
    cap = a.capture
    if cap and cap.format == "chrome-json" and cap.events >= XPROF_EVENT_CAP:
        out.append(f"this trace JSON holds {cap.events:,} events, the most XProf writes: the capture it was "
                   f"made from may hold more (its .xplane.pb has them all).")
    if cap and not a.ops and cap.unread_cpu_ops:
        out.append(f"this trace JSON is an XLA:CPU capture: its {cap.unread_cpu_ops:,} op executions are on host "
                   f"threads, without the HLO that names their scopes; summarize the .xplane.pb it came from.")
        return out
    if not a.ops:
        if fw == TENSORFLOW:
            out.append("this capture holds no XLA op executions: it is a TensorFlow capture without XLA (its "
                       "device planes hold `TensorFlow Ops` lines), and the tables cover XLA programs only.")
        else:
            out.append("this capture holds no XLA op executions (no `XLA Ops` line on a device plane, no XLA:CPU "
                       "op events): the op tables are empty.")
        return out
    train = training_program(a)
    if train:
        out.append(f"this is a training capture: `{train}` runs a backward pass (ops under `transpose(jvp(...))`), "
                   f"so there are no inference phases; its steps are one phase, `all`.")
    elif a.rules and a.rules.phases.source == "none":
        out.append("the capture does not say which steps are prefill and which decode: a step annotation "
                   "(`jax.profiler.StepTraceAnnotation(\"prefill\" or \"decode\", step_num=n)`) around each step, "
                   "or tpu-inference's batch-composition files beside the capture, would.")
    total = sum(o.self_ns for o in a.ops) or 1.0
    unscoped = 100 * sum(o.self_ns for o in a.ops if o.scope == UNSCOPED) / total
    if unscoped >= 99.9:
        out.append(f"no module names in this capture's op metadata; {_why_unscoped(a)}.")
    elif unscoped >= UNSCOPED_NOTE_PCT:
        out.append(f"{unscoped:.0f}% of op time has no module scope; {_why_unscoped(a)}.")
    if a.rules and a.rules.layers.how == "inferred":
        out.append("no scope numbers the decoder layers, so they were inferred from the block of ops that "
                   "repeats in each step; a `jax.named_scope` per layer (e.g. `layers.3`) names them exactly.")
    return out

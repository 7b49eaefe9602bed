"""`python -m profiling mcp`: the analysis as tools for an agent, over MCP's stdio transport (the
official `mcp` SDK), as XProf serves its tools: summarize, compare, findings, and a request
lookup. Each takes what `summarize` takes (a run dir, a run's name, a profile dir or a capture
file; optionally a service profile dir to join). A bad path is the tool's error, one sentence.
Analyses are kept while their capture file is unchanged, so a conversation's calls on one
capture read it once."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

from .analysis.analysis import Analysis

INSTRUCTIONS = ("XLA inference profiles: `summarize` prints a capture's phase, request, layer and op tables; "
                "`findings` lists what to fix first with evidence and estimated cost; `request` takes one "
                "request's device time and TTFT apart; `compare` gives two captures' deltas.")


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: float) -> Analysis:
    return Analysis.load(path)


def load(path: str) -> Analysis:
    from .runs.layout import resolve_run
    _, xplane = resolve_run(path)
    return _load(os.path.abspath(xplane), os.path.getmtime(xplane))


def _served(a: Analysis, service: str | None):
    if not service:
        return None
    from .service import join
    return join.served(join.load(service), a)


def summarize(path: str, top: int = 15, service: str | None = None) -> str:
    """Every table of one capture as text, ending with its findings."""
    from .analysis.findings import findings as run_findings
    from .export import text
    a = load(path)
    served = _served(a, service)
    return text.render(a, top, False, served, "", run_findings(a, served))


def compare(a: str, b: str, top: int = 15) -> str:
    """B's deltas against A, per phase, layer and op, largest change first."""
    from .analysis import compare as compare_mod
    from .export.text import compare_text
    return "\n\n".join(compare_text(t, limit=top) for t in compare_mod.compare(load(a), load(b)))


def findings(path: str, service: str | None = None) -> dict[str, Any]:
    """What to fix first: each finding's rule, value against its threshold, estimated cost per
    step and per request, evidence and advice, costliest first."""
    from .analysis.findings import findings as run_findings
    a = load(path)
    return {"findings": [dataclasses.asdict(f) for f in run_findings(a, _served(a, service)).rows]}


def request(path: str, request_id: str, service: str | None = None) -> dict[str, Any]:
    """One request: its queue time, device time by phase, host and padding time, TTFT and TPOT
    taken apart, and the steps it rode in."""
    from .analysis.requests import request_table, shares
    a = load(path)
    served = _served(a, service)
    rows = {r.request_id: r for r in request_table(a, served).rows}
    if request_id not in rows:
        known = ", ".join(list(rows)[:10])
        raise ValueError(f"request {request_id!r} rode in none of this capture's steps (its requests: {known}).")
    steps = [dict(step=s.step.step, phase=s.phase, device_ms=s.device_ms, padding_ms=s.padding_ms, host_ms=s.host_ms)
             for s in shares(a, served) if s.request_id == request_id]
    return {"request": dataclasses.asdict(rows[request_id]), "steps": steps}


def _tool(fn):
    """The tool as MCP sees it: a bad input (ValueError, one sentence) is the tool's error, which
    the agent reads and can correct."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise ToolError(str(e)) from None
    return call


def server():
    from mcp.server.mcpserver import MCPServer
    srv = MCPServer("tpu-inference-profiler", instructions=INSTRUCTIONS)
    for fn in (summarize, compare, findings, request):
        srv.tool()(_tool(fn))
    return srv


def run() -> int:
    server().run("stdio")
    return 0

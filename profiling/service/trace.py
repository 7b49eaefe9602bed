"""The service profile as a Chrome trace (Perfetto, chrome://tracing), built from the tables
`parse.build` returns: a "Requests" process with one track per request (queued, prefill,
decode and http slices), an "Engine" process with the step, batch and forward tracks and the
KV-cache counters, and an "Other" process with one track per domain for custom symbols."""
from __future__ import annotations

REQUESTS, ENGINE, OTHER = 1, 2, 3


def chrome_trace(t: dict) -> dict:
    spans, markers, by = t["spans"], t["markers"], t["by"]
    if not spans and not markers:
        return {"traceEvents": [], "displayTimeUnit": "ms"}
    t0 = min([s["start"] for s in spans] + [m["t"] for m in markers])
    ts = lambda ns: (ns - t0) / 1e3  # noqa: E731
    many = len(t["pids"]) > 1
    pre = (lambda src: f"pid {t['pids'][src]} ") if many else (lambda src: "")
    slices = []  # (process, track, sort index, name, start, end, args)
    for i, r in enumerate(t["request"]):
        rr, h, rid, track = r["_r"], r["_http"], r["request_id"], (REQUESTS, r["request_id"], i)
        if r["_arrival"] is not None and "alloc" in rr:
            slices.append((*track, "queued", r["_arrival"], rr["alloc"]["start"], {"request_id": rid}))
        if "prefill" in rr:
            p = rr["prefill"]
            slices.append((*track, "prefill", p["start"], p["end"], {"step": p["attrs"].get("step")}))
        if "prefill" in rr and rr["decodes"] and "free" in rr:
            slices.append((*track, "decode", rr["prefill"]["end"], rr["free"]["start"],
                           {"decode_steps": rr["decodes"], "output_tokens": r["output_tokens"]}))
        if h:
            slices.append((*track, "http", h["start"], h["end"], h["attrs"]))
    for key, kind, order in ((("Schedule", "step"), "step", 0), (("Schedule", "batch"), "batch", 1),
                             (("ModelExecute", "prefill"), "forward", 2), (("ModelExecute", "decode"), "forward", 2)):
        for s in by[key]:
            name = s["attrs"].get("phase", "batch") if kind == "batch" else s["name"]
            slices.append((ENGINE, f"{pre(s['src'])}{s['thread'][2]} {kind}", order, str(name), s["start"], s["end"], s["attrs"]))
    for s in by[None]:
        slices.append((OTHER, pre(s["src"]) + s["domain"], 0, s["name"], s["start"], s["end"], s["attrs"]))
    slices.sort(key=lambda x: (x[4], -x[5]))

    events, lanes, tid_of = [], {}, {}
    for proc, track, order, name, start, end, args in slices:
        for n, stack in enumerate(lanes.setdefault((proc, track), [])):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or stack[-1] >= end:
                break
        else:  # overlaps without nesting on every lane so far: one more lane
            n, stack = len(lanes[(proc, track)]), []
            lanes[(proc, track)].append(stack)
        stack.append(end)
        if (proc, track, n) not in tid_of:
            tid_of[(proc, track, n)] = len(tid_of) + 1
            events.append(dict(ph="M", name="thread_name", pid=proc, tid=tid_of[(proc, track, n)], ts=0,
                               args={"name": track if n == 0 else f"{track} ({n + 1})"}))
            events.append(dict(ph="M", name="thread_sort_index", pid=proc, tid=tid_of[(proc, track, n)], ts=0,
                               args={"sort_index": order * 100 + n}))
        events.append(dict(ph="X", name=name, cat=track, pid=proc, tid=tid_of[(proc, track, n)], ts=ts(start),
                           dur=(end - start) / 1e3, args=args))
    for m in markers:
        events.append(dict(ph="i", s="p", name=f"collection {m['name']}", pid=ENGINE, tid=0, ts=ts(m["t"]),
                           args={"pid": t["pids"][m["src"]]}))
    for when, src, slots, tokens in t["counters"]:
        events.append(dict(ph="C", name=f"{pre(src)}KV slots used", pid=ENGINE, tid=0, ts=ts(when), args={"slots": slots}))
        events.append(dict(ph="C", name=f"{pre(src)}KV tokens held", pid=ENGINE, tid=0, ts=ts(when), args={"tokens": tokens}))
    used = {e["pid"] for e in events} | {REQUESTS, ENGINE}
    for pid, name in ((REQUESTS, "Requests"), (ENGINE, "Engine"), (OTHER, "Other")):
        if pid in used:
            events.append(dict(ph="M", name="process_name", pid=pid, tid=0, ts=0, args={"name": name}))
            events.append(dict(ph="M", name="process_sort_index", pid=pid, tid=0, ts=0, args={"sort_index": pid}))
    return {"traceEvents": events, "displayTimeUnit": "ms"}

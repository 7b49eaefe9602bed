"""One timeline as a Perfetto trace (`.pftrace`, TracePacket protobuf), built with Perfetto's own
Python package (`perfetto.trace_builder`): a Requests group with a track per request (queued,
prefill, decoding), the engine's steps, one track per op timeline (host XLA thread or device)
and counters for each step's batch size and longest context. Each request slice starts one flow
per step it rode in, and the step's slice ends it, so in the Perfetto UI a click on a slow
request follows its arrows to its steps and their ops. (XProf and TensorBoard read the capture
itself; chrome_trace.py writes the same timeline as JSON for chrome://tracing.)"""
from __future__ import annotations

import itertools

from ..analysis.analysis import Analysis
from ..analysis.requests import Served
from ..runs import files as runfiles
from .chrome_trace import nested
from .timeline import request_slices

SEQUENCE = 1  # one writer, one packet sequence


class _Builder:
    def __init__(self):
        from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TrackEvent
        from perfetto.trace_builder.proto_builder import TraceProtoBuilder
        self.proto, self.TrackEvent = TraceProtoBuilder(), TrackEvent
        self._uuid = itertools.count(1)
        self.first = True

    def _packet(self):
        p = self.proto.add_packet()
        p.trusted_packet_sequence_id = SEQUENCE
        if self.first:  # the sequence starts clean: no state from an earlier writer
            p.sequence_flags = 1
            self.first = False
        return p

    def track(self, name: str, parent: int | None = None, counter: bool = False, rank: int = 0) -> int:
        uuid = next(self._uuid)
        p = self._packet()
        p.track_descriptor.uuid = uuid
        p.track_descriptor.name = name
        p.track_descriptor.sibling_order_rank = rank
        if parent is not None:
            p.track_descriptor.parent_uuid = parent
        if counter:
            p.track_descriptor.counter.SetInParent()
        return uuid

    def slice(self, track: int, name: str, start_ns: float, end_ns: float, flows=(), ends=(), args=None) -> None:
        begin = self._packet()
        begin.timestamp = int(start_ns)
        ev = begin.track_event
        ev.type, ev.track_uuid, ev.name = self.TrackEvent.TYPE_SLICE_BEGIN, track, name
        ev.flow_ids.extend(flows)
        ev.terminating_flow_ids.extend(ends)
        for k, v in (args or {}).items():
            ann = ev.debug_annotations.add()
            ann.name = k
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                ann.string_value = str(v)
            elif isinstance(v, int):
                ann.int_value = v
            else:
                ann.double_value = v
        end = self._packet()
        end.timestamp = int(max(end_ns, start_ns))
        end.track_event.type, end.track_event.track_uuid = self.TrackEvent.TYPE_SLICE_END, track

    def counter(self, track: int, at_ns: float, value: float) -> None:
        p = self._packet()
        p.timestamp = int(at_ns)
        p.track_event.type, p.track_event.track_uuid = self.TrackEvent.TYPE_COUNTER, track
        p.track_event.double_counter_value = value


def build(a: Analysis, served: Served | None = None) -> bytes:
    """The trace as bytes; trace time is the capture's own (ns)."""
    b = _Builder()
    requests, steps = b.track("Requests", rank=0), b.track("engine steps", rank=1)
    batch, kv = b.track("batch size", counter=True, rank=2), b.track("KV length (longest)", counter=True, rank=3)
    arriving: dict[int, list[int]] = {}
    tracks: dict[str, int] = {}
    for sl in request_slices(a, served):
        if sl.request_id not in tracks:
            tracks[sl.request_id] = b.track(f"request {sl.request_id}", parent=requests, rank=len(tracks))
        b.slice(tracks[sl.request_id], sl.name, sl.start_ns, sl.end_ns, flows=[f.id for f in sl.flows],
                args={"request_id": sl.request_id, "steps": " ".join(str(f.step.step) for f in sl.flows)})
        for f in sl.flows:
            arriving.setdefault(id(f.step), []).append(f.id)
    lanes: dict[str, list] = {}
    for step in a.steps:
        rec = step.record
        args = {"step": step.step, "phase": step.phase, "source": step.source}
        if rec:
            args.update(batch_size=rec.batch_size, num_tokens=rec.num_tokens, padded_tokens=rec.padded_tokens,
                        kv_len_max=rec.kv_len_max, requests=" ".join(rec.request_ids))
            b.counter(batch, step.start_ns, rec.batch_size)
            b.counter(kv, step.start_ns, rec.kv_len_max)
        b.slice(steps, f"{step.phase} {step.step}", step.start_ns, step.end_ns, ends=arriving.get(id(step), ()),
                args=args)
        for op in step.ops:
            lanes.setdefault(op.timeline or op.device, []).append((op, step.step))
    for rank, (lane, ops) in enumerate(lanes.items()):
        track, step_of = b.track(lane, rank=10 + rank), {id(o): n for o, n in ops}
        for op, start, end in nested([o for o, _ in ops]):
            b.slice(track, op.name, start, end, args={"scope": op.scope, "category": op.category,
                                                      "step": step_of[id(op)]})
    return b.proto.serialize()


def write(a: Analysis, path: str, out: runfiles.Outputs | None = None, served: Served | None = None) -> str:
    data = build(a, served)

    def dump(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return (out or runfiles.Outputs()).write(path, dump)

"""Read a capture's `.xplane.pb` (the profiler's XSpace protobuf) in plain Python.

XProf's converters answer most questions about a capture, but they report times relative to
the capture's start. The raw XSpace keeps absolute line timestamps (ns since the epoch), which
is what lets us line captured step scopes up with the engine's own wall-clock step records.
The message classes are built at import time from the field table below (tsl's xplane.proto),
so no generated module is needed.

Captures are large and most of their events are thread-pool bookkeeping, so `load` keeps the
file's bytes, parses each plane's metadata at once and its lines only on demand, optionally
keeping just the events whose metadata ids a caller names.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from tpu_engine.events import PHASES

_F = descriptor_pb2.FieldDescriptorProto
_INT64, _UINT64, _DOUBLE, _STRING, _BYTES, _MSG = (
    _F.TYPE_INT64, _F.TYPE_UINT64, _F.TYPE_DOUBLE, _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_MESSAGE)
_REP = _F.LABEL_REPEATED

# message -> [(field, number, type, repeated, message type, oneof)]
_FIELDS = {
    "XSpace": [("planes", 1, _MSG, True, "XPlane", None), ("errors", 2, _STRING, True, None, None),
               ("warnings", 3, _STRING, True, None, None), ("hostnames", 4, _STRING, True, None, None)],
    "XPlane": [("id", 1, _INT64, False, None, None), ("name", 2, _STRING, False, None, None),
               ("lines", 3, _MSG, True, "XLine", None),
               ("event_metadata", 4, _MSG, True, "XPlane.EventMetadataEntry", None),
               ("stat_metadata", 5, _MSG, True, "XPlane.StatMetadataEntry", None),
               ("stats", 6, _MSG, True, "XStat", None)],
    "XLine": [("id", 1, _INT64, False, None, None), ("display_id", 10, _INT64, False, None, None),
              ("name", 2, _STRING, False, None, None), ("display_name", 11, _STRING, False, None, None),
              ("timestamp_ns", 3, _INT64, False, None, None), ("duration_ps", 9, _INT64, False, None, None),
              ("events", 4, _MSG, True, "XEvent", None)],
    "XEvent": [("metadata_id", 1, _INT64, False, None, None), ("offset_ps", 2, _INT64, False, None, "data"),
               ("num_occurrences", 5, _INT64, False, None, "data"),
               ("duration_ps", 3, _INT64, False, None, None), ("stats", 4, _MSG, True, "XStat", None)],
    "XStat": [("metadata_id", 1, _INT64, False, None, None), ("double_value", 2, _DOUBLE, False, None, "value"),
              ("uint64_value", 3, _UINT64, False, None, "value"), ("int64_value", 4, _INT64, False, None, "value"),
              ("str_value", 5, _STRING, False, None, "value"), ("bytes_value", 6, _BYTES, False, None, "value"),
              ("ref_value", 7, _UINT64, False, None, "value")],
    "XEventMetadata": [("id", 1, _INT64, False, None, None), ("name", 2, _STRING, False, None, None),
                       ("display_name", 4, _STRING, False, None, None), ("metadata", 3, _BYTES, False, None, None),
                       ("stats", 5, _MSG, True, "XStat", None), ("child_id", 6, _INT64, True, None, None)],
    "XStatMetadata": [("id", 1, _INT64, False, None, None), ("name", 2, _STRING, False, None, None),
                      ("description", 3, _STRING, False, None, None)],
}
_PACKAGE = "tpu_profiling.xplane"  # our own package name: never clashes with a generated module


def _build_classes():
    file = descriptor_pb2.FileDescriptorProto(name="tpu_profiling_xplane.proto", package=_PACKAGE,
                                              syntax="proto3")
    for name, fields in _FIELDS.items():
        msg = file.message_type.add(name=name)
        oneofs: list[str] = []
        for fname, number, ftype, repeated, type_name, oneof in fields:
            f = msg.field.add(name=fname, number=number, type=ftype,
                              label=_REP if repeated else _F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
            if oneof:
                if oneof not in oneofs:
                    oneofs.append(oneof)
                    msg.oneof_decl.add(name=oneof)
                f.oneof_index = oneofs.index(oneof)
        if name == "XPlane":  # the two map<int64, ...> fields
            for entry, value in (("EventMetadataEntry", "XEventMetadata"), ("StatMetadataEntry", "XStatMetadata")):
                m = msg.nested_type.add(name=entry)
                m.options.map_entry = True
                m.field.add(name="key", number=1, type=_INT64, label=_F.LABEL_OPTIONAL)
                m.field.add(name="value", number=2, type=_MSG, label=_F.LABEL_OPTIONAL,
                            type_name=f".{_PACKAGE}.{value}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{n}"))
            for n in _FIELDS}


_CLASSES = _build_classes()
# An XSpace begins with one of its fields (1-4), length-delimited: tag bytes 0x0a, 0x12, 0x1a, 0x22.
_FIRST_BYTES = tuple(bytes([(n << 3) | 2]) for n in (1, 2, 3, 4))
XSpace = _CLASSES["XSpace"]
XPlane = _CLASSES["XPlane"]
XLine = _CLASSES["XLine"]


def _varint(buf, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, start of the field with its tag, start of payload, end) for each
    top-level field of the message in buf[start:end]. Damage is a ValueError at once: field
    number 0 (a zero-filled file would otherwise be walked byte by byte), a length past the end."""
    i = start
    while i < end:
        field_start = i
        tag, i = _varint(buf, i)
        wire = tag & 7
        if tag >> 3 == 0:
            raise ValueError(f"field number 0 at byte {field_start}")
        if wire == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ValueError(f"a field of {n} bytes at byte {field_start} runs past the end")
            yield tag >> 3, field_start, i, i + n
            i += n
        elif wire == 0:
            _, j = _varint(buf, i)
            yield tag >> 3, field_start, i, j
            i = j
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            yield tag >> 3, field_start, i, i + n
            i += n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


class Plane:
    """One XPlane: name, metadata maps and plane stats parsed; lines parsed when asked for (a
    damaged line is then a ValueError naming the capture, never a protobuf DecodeError)."""

    def __init__(self, data: memoryview, start: int, end: int, source: str = "capture"):
        self._data, self.source = data, source
        rest, self._line_spans = [], []
        for field, fstart, pstart, fend in _fields(data, start, end):
            if field == 3:  # lines
                self._line_spans.append((pstart, fend))
            else:
                rest.append(data[fstart:fend])
        meta = XPlane()
        meta.ParseFromString(b"".join(rest))
        self.id, self.name = meta.id, meta.name
        self.event_metadata, self.stat_metadata, self.stats = meta.event_metadata, meta.stat_metadata, meta.stats

    @property
    def lines(self):
        return self.iter_lines()

    def iter_lines(self, keep=None, skip=None):
        """Each XLine, parsed now; with `keep` (a set of event metadata ids), only those events;
        with `skip` (a predicate on the line's name), not the lines it names."""
        for _, line in self.iter_line_chunks(keep, skip=skip):
            yield line

    def iter_line_chunks(self, keep=None, chunk: int | None = None, skip=None):
        """(line index, XLine) with at most `chunk` events per XLine (a long line comes in
        several pieces with the same index), keeping only events in `keep` when given: this
        bounds the memory a huge line needs while it is read. Lines whose name `skip` accepts
        are passed over without reading their events (a line's name precedes its events). A
        damaged line is a ValueError naming the capture, never protobuf's DecodeError."""
        index = 0
        try:
            for index, line in self._line_chunks(keep, chunk, skip):
                yield index, line
        except (DecodeError, ValueError, IndexError):
            raise ValueError(f"capture {self.source} is damaged: line {index} of plane {self.name!r} cannot "
                             f"be read.") from None

    def _line_chunks(self, keep, chunk, skip):
        for index, (start, end) in enumerate(self._line_spans):
            if skip is not None and skip(self._line_name(start, end)):
                continue
            if keep is None and chunk is None:
                line = XLine()
                line.ParseFromString(self._data[start:end])
                yield index, line
                continue
            head, events = [], []
            for field, fstart, pstart, fend in _fields(self._data, start, end):
                if field != 4:
                    head.append(self._data[fstart:fend])
                    continue
                if keep is not None:
                    md = 0  # an event's metadata_id (field 1) is written first when it is set
                    if self._data[pstart] == 0x08:
                        md, _ = _varint(self._data, pstart + 1)
                    if md not in keep:
                        continue
                events.append((fstart, fend))
            step = chunk or max(1, len(events))
            for i in range(0, max(1, len(events)), step):
                line = XLine()
                line.ParseFromString(b"".join(head + [self._data[a:b] for a, b in events[i:i + step]]))
                yield index, line

    def _line_name(self, start: int, end: int) -> str:
        for field, _, pstart, fend in _fields(self._data, start, end):
            if field == 2:
                return bytes(self._data[pstart:fend]).decode("utf-8", "replace")
            if field == 4:  # events come after the name: this line has none
                break
        return ""


class Space:
    """An XSpace read lazily: `planes` (Plane objects) and `hostnames`."""

    def __init__(self, data: bytes, source: str = "capture"):
        self._data = memoryview(data)
        self.planes, self.hostnames = [], []
        for field, _, pstart, fend in _fields(self._data, 0, len(data)):
            if field == 1:
                self.planes.append(Plane(self._data, pstart, fend, source))
            elif field == 4:
                self.hostnames.append(bytes(self._data[pstart:fend]).decode())

    def planes_named(self, prefix: str) -> Iterator[Plane]:
        """The planes whose name starts with `prefix` (`/host:`, `/device:`, ...)."""
        return (p for p in self.planes if p.name.startswith(prefix))


def load(path: str) -> Space:
    """Read an `.xplane.pb`; ValueError if it is empty or not an XSpace."""
    from ..runs.files import read_bytes, read_head, space_note
    if read_head(path, 1) not in (b"", *_FIRST_BYTES):  # refused before a huge file is read whole
        raise ValueError(f"capture {path} is not a readable XSpace protobuf (it does not begin like one).")
    data = read_bytes(path)
    if not data:
        raise ValueError(f"capture {path} is empty (0 bytes{space_note(path)}).")
    try:
        space = Space(data, path)
    except Exception:
        raise ValueError(f"capture {path} is not a readable XSpace protobuf.") from None
    if not space.planes:
        raise ValueError(f"capture {path} holds no planes.")
    return space


def stat_value(stat, stat_meta):
    kind = stat.WhichOneof("value")
    if kind == "ref_value":
        return stat_meta[stat.ref_value].name if stat.ref_value in stat_meta else stat.ref_value
    return getattr(stat, kind) if kind else None


def plane_stats(plane) -> dict:
    return {plane.stat_metadata[s.metadata_id].name: stat_value(s, plane.stat_metadata)
            for s in plane.stats if s.metadata_id in plane.stat_metadata}


def session_times_ns(space) -> tuple[int, int] | None:
    """(profile start, profile stop) in ns since the epoch, from the 'Task Environment' plane."""
    for plane in space.planes:
        if plane.name == "Task Environment":
            st = plane_stats(plane)
            if "profile_start_time" in st:
                return int(st["profile_start_time"]), int(st.get("profile_stop_time", 0))
    return None


def origin_ps(space) -> int:
    """Exported captures count line timestamps from the profile's start; this is that start
    (ps since the epoch), to add back for absolute times."""
    session = session_times_ns(space)
    return session[0] * 1000 if session else 0


@dataclasses.dataclass
class StepScope:
    phase: str
    step: int
    start_ns: float
    end_ns: float




def step_scopes(space) -> list[StepScope]:
    """The engine's step annotations (a TraceMe named after the phase, with a `step_num`).
    Only events whose metadata names a phase are decoded, which keeps this fast on big captures."""
    origin = origin_ps(space)
    out = []
    for plane in space.planes_named("/host:"):
        phase_of = {k: m.name for k, m in plane.event_metadata.items() if m.name in PHASES}
        step_stat = [k for k, m in plane.stat_metadata.items() if m.name == "step_num"]
        if not phase_of or not step_stat:
            continue
        for line in plane.iter_lines(keep=set(phase_of)):
            base_ps = origin + line.timestamp_ns * 1000
            for ev in line.events:
                if ev.metadata_id not in phase_of:
                    continue
                step = [st for st in ev.stats if st.metadata_id == step_stat[0]]
                if not step:
                    continue
                value = stat_value(step[0], plane.stat_metadata)
                start = (base_ps + ev.offset_ps) / 1000
                out.append(StepScope(phase_of[ev.metadata_id], int(value), start, start + ev.duration_ps / 1000))
    return sorted(out, key=lambda s: s.start_ns)


def hlo_modules(space) -> Iterator[tuple[str, bytes]]:
    """(module name, serialized HloProto) for each XLA program the capture embeds."""
    for plane in space.planes:
        if plane.name != "/host:metadata":
            continue
        for md in plane.event_metadata.values():
            for st in md.stats:
                meta = plane.stat_metadata.get(st.metadata_id)
                if meta is not None and meta.name == "Hlo Proto" and st.WhichOneof("value") == "bytes_value":
                    yield md.name, st.bytes_value

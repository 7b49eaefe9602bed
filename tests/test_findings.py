"""Findings: each rule fires on a capture built to show it and stays silent on a clean one.

Captures: the session's 6 requests in 4 slots (padded prefills, a full queue, a CPU's host time
and roofline); two server-style captures of one in-process JAX engine (tpu_engine's own
`LiveCapture`, as /start_profile makes them): a clean window (prompts that fill their bucket,
as many requests as slots, every shape warmed up) and a forced recompile (a prompt whose shape
the warm-up left out); the shared TPU capture (copy-done waits on 4 devices). The layer-outlier
and device-skew rules also run on analyses built from parts, where the answer is known. The
engine's OpenTelemetry request spans are checked here too, on the SDK's in-memory exporter."""
from __future__ import annotations

import os
import shutil

import pytest

from profiling.analysis.analysis import Analysis, Step
from profiling.analysis.findings import BY_NAME, findings
from profiling.analysis.measures import Inputs
from profiling.trace.ops import Op, Run
from tests.captures import proc_output

TPU_XPLANE = "/work/shared/testdata/tpu_v6e4_jax_xprof_tpu_inference_2.xplane.pb"
needs_testdata = pytest.mark.skipif(not os.path.exists(TPU_XPLANE), reason=f"shared captures not available "
                                                                           f"({TPU_XPLANE})")


def fired(a: Analysis, rule: str) -> list:
    return [f for f in findings(a).rows if f.rule == rule]


def measured(a: Analysis, rule: str) -> list:
    return BY_NAME[rule].measure(Inputs(a))


@pytest.fixture(scope="module")
def req(requests_capture):
    assert requests_capture.proc.returncode == 0, proc_output(requests_capture.proc)
    return Analysis.load(requests_capture.run)


@pytest.fixture(scope="module")
def live(tmp_path_factory, llama_dir):
    """One JAX engine warmed up for 2 requests of 16 tokens in 2 slots; a clean window of exactly
    those, then a window with a 20-token prompt alone (a prefill and a decode shape not warmed
    up); the engine's request spans on the SDK's in-memory exporter throughout."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from profiling.capture.live import LiveCapture
    from profiling.service import otlp
    from tpu_engine.engine import EngineConfig, LLMEngine
    from tpu_engine.outputs import SamplingParams
    from tpu_engine.scheduler import ExpectedRequests
    engine = LLMEngine(EngineConfig(model=llama_dir, backend="jax", max_model_len=64, max_num_seqs=2, progress=False,
                                    expected=ExpectedRequests(((16, 3), (16, 3)))))
    spans = InMemorySpanExporter()
    close = otlp.install(engine, "", exporter=spans)
    capture = LiveCapture(str(tmp_path_factory.mktemp("live")), engine)

    def window(prompts, max_tokens):
        capture.start()
        for i, n in enumerate(prompts):
            engine.add_request(f"{len(prompts)}-{n}-{i}", {"prompt_token_ids": list(range(1, n + 1))},
                               SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
        return Analysis.load(capture.finish(capture.stop()).run_dir)
    clean, recompiled = window([16, 16], 3), window([20], 2)
    close()
    return dict(clean=clean, recompiled=recompiled, spans=spans.get_finished_spans())


def test_padding_fires_on_padded_prefills_and_not_on_full_buckets(req, live):
    got = fired(req, "padding")
    assert [f.subject for f in got] == ["prefill"] and got[0].value == pytest.approx(25.0)  # 40 of 160 tokens
    assert got[0].per_step_ms > 0 and "40 of 160 compiled tokens are padding" in got[0].evidence
    assert fired(live["clean"], "padding") == [] and [m.value for m in measured(live["clean"], "padding")] == [0, 0]


def test_queueing_fires_on_a_full_queue_and_not_when_every_request_has_a_slot(req, live):
    got = fired(req, "queueing")
    assert len(got) == 1 and got[0].per_request_ms > 0
    assert "ran with all 4 slots busy" in got[0].evidence and "behind prefill" in got[0].evidence
    assert fired(live["clean"], "queueing") == []


def test_recompile_fires_on_a_shape_the_warm_up_left_out_and_names_it(live):
    got = fired(live["recompiled"], "recompile")
    assert got, [s.record for s in live["recompiled"].steps]
    first = got[0] if got[0].subject.startswith("step") else None
    prefill = next(s for s in live["recompiled"].steps if s.phase == "prefill")
    assert first is not None and any(f.subject == f"step {prefill.step}" for f in got)
    text = next(f.evidence for f in got if f.subject == f"step {prefill.step}")
    assert "32 tokens x 1 sequences" in text and "sampler `greedy`" in text and "brought by request 1-20-0" in text
    assert "warm up without `expected`" in text and "on TPU a compile takes seconds" in got[0].advice
    assert fired(live["clean"], "recompile") == []


def test_host_and_roofline_fire_on_a_cpu_capture(req, live):
    """A tiny model on a CPU: most of each step is host time, far from the measured peaks."""
    assert {f.subject for f in fired(req, "host")} == {"prefill", "decode"}
    roof = fired(req, "roofline")
    assert {f.subject for f in roof} == {"prefill", "decode"} and all("% of the" in f.evidence for f in roof)
    # a server capture on CPU records no peaks: nothing to compare against, so no roofline finding
    assert fired(live["clean"], "roofline") == []


@needs_testdata
def test_collective_waits_fire_on_the_tpu_capture_and_not_on_one_cpu(req, tmp_path):
    copy = tmp_path / os.path.basename(TPU_XPLANE)  # XProf writes beside a capture: read a copy
    shutil.copy(TPU_XPLANE, copy)
    tpu = Analysis.load(str(copy))
    got = fired(tpu, "collective")
    assert len(got) == 1 and "copy-done" in got[0].evidence
    assert got[0].value > BY_NAME["collective"].threshold
    assert fired(req, "collective") == []
    # the same program on 4 TPUs at once runs within a few percent on each: no skew
    assert fired(tpu, "skew") == [] and measured(tpu, "skew")


def _parts(layer_ms: list[float], device_ms: list[float] | None = None) -> Analysis:
    """Steps of 4 identical layers (one op each) on one or more devices."""
    ms, ops, runs = 1e6, [], []
    for d, scale in enumerate(device_ms or [1.0]):
        t = 0.0
        for n, dur in enumerate(layer_ms):
            ops.append(Op("m", f"dot.{n}", t, dur * scale * ms, f"model.layers.{n}.mlp", "matmul", "dot", "",
                          f"/device:TPU:{d}", timeline=f"TPU:{d}"))
            t += dur * scale * ms
        runs.append(Run("jit_step", f"/device:TPU:{d}", 0.0, t))
    end = max(o.end_ns for o in ops)
    a = Analysis.from_parts([Step("decode", 0, 0.0, end, None, runs=runs)], ops, [(r.start_ns, r.end_ns) for r in runs])
    a.device_runs = runs
    return a


def test_outlier_layer_and_device_skew_fire_where_built_and_not_on_identical_parts():
    slow = fired(_parts([1.0, 1.0, 2.0, 1.0]), "outlier")
    assert [f.subject for f in slow] == ["decode model.layers.2"] and slow[0].value == pytest.approx(100)
    assert fired(_parts([1.0] * 4), "outlier") == []
    skew = fired(_parts([1.0] * 4, [1.0, 1.5]), "skew")
    assert len(skew) == 1 and skew[0].value == pytest.approx(100 / 3) and "TPU:1" in skew[0].evidence
    assert fired(_parts([1.0] * 4, [1.0, 1.0]), "skew") == []


def test_findings_are_ranked_by_the_time_they_cost(req):
    rows = findings(req).rows
    assert [f.rank for f in rows] == list(range(1, len(rows) + 1))
    assert [f.total_ms for f in rows] == sorted((f.total_ms for f in rows), reverse=True)


def test_request_spans_go_out_through_the_otel_sdk_with_step_time(live):
    """The clean window's 2 requests: one span each, its share of its steps' wall time."""
    spans = {s.attributes["gen_ai.request.id"]: s for s in live["spans"]}
    clean = live["clean"]
    for rid in ("2-16-0", "2-16-1"):
        s = spans[rid]
        assert s.name == "llm_request" and s.attributes["gen_ai.usage.prompt_tokens"] == 16
        assert s.attributes["gen_ai.usage.completion_tokens"] == 3 and s.attributes["tpu.steps"] == 3
        prefill = next(st.record for st in clean.steps if st.phase == "prefill")
        step_ms = (prefill.wall_end - prefill.wall_start) * 1e3
        assert s.attributes["tpu.prefill_step_ms"] == pytest.approx(step_ms / 2)   # half of a full bucket
        assert s.attributes["tpu.padding_ms"] == 0
        a = s.attributes
        assert 0 <= a["gen_ai.latency.time_in_queue"] < a["gen_ai.latency.time_to_first_token"] <= \
            a["gen_ai.latency.e2e"]
    assert spans["1-20-0"].attributes["tpu.compiles"] > 0

"""One profiling run: check everything, warm up, capture the profiled passes, verify and
publish each capture with its manifest and run record.

Capture windows:
  * env window (the seed's): a detached trace against the profiler server, starting
    VLLM_TPU_PROFILE_DELAY_MS after the passes begin and lasting VLLM_TPU_PROFILE_DURATION_MS.
    Used when either variable is set (it wins over --profile-phase) or no phase is asked for.
  * phase window (--profile-phase): started and stopped at the engine's step boundaries,
    one capture per profiled pass.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time

from tqdm import tqdm

from . import record as manifest
from . import windows as capture
from . import workload
from .verify import check_capture

DELAY_ENV, DURATION_ENV = "VLLM_TPU_PROFILE_DELAY_MS", "VLLM_TPU_PROFILE_DURATION_MS"
DEFAULT_DELAY_MS, DEFAULT_DURATION_MS = 0, 3000


@dataclasses.dataclass
class Window:
    kind: str                      # "env" or "phase"
    delay_ms: int = 0
    duration_ms: int = 0
    phase: str = "all"
    max_steps: int | None = None
    min_batch: int = 1
    min_kv_len: int = 0


def _env_int(environ, name: str, default: int, minimum: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer number of milliseconds.") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}.")
    return value


def plan_window(args, environ=os.environ) -> Window:
    delay = _env_int(environ, DELAY_ENV, DEFAULT_DELAY_MS, 0)
    duration = _env_int(environ, DURATION_ENV, DEFAULT_DURATION_MS, 1)
    env_set = any(environ.get(k, "").strip() for k in (DELAY_ENV, DURATION_ENV))
    if args.profile_phase and not env_set:
        return Window("phase", phase=args.profile_phase, max_steps=args.profile_steps,
                      min_batch=args.profile_min_batch, min_kv_len=args.profile_min_kv_len)
    if args.profile_phase:
        print(f"note: {DELAY_ENV}/{DURATION_ENV} are set, so the env window is used and "
              f"--profile-phase {args.profile_phase} is ignored.", file=sys.stderr)
    return Window("env", delay_ms=delay, duration_ms=duration)


def check_limits(args, lengths: list[int], max_model_len: int, max_batched: int, max_num_seqs: int) -> None:
    """vLLM's checks on the batch against the engine's limits."""
    if args.batch_size * args.input_len > max_batched:
        raise ValueError(f"batch size {args.batch_size} x input length {args.input_len} = "
                         f"{args.batch_size * args.input_len} tokens exceeds max_num_batched_tokens "
                         f"{max_batched}; raise --max-num-batched-tokens or shrink the batch.")
    if args.batch_size > max_num_seqs:
        raise ValueError(f"batch size {args.batch_size} exceeds max_num_seqs {max_num_seqs}; "
                         f"raise --max-num-seqs.")
    if args.input_len + max(lengths) > max_model_len:
        raise ValueError(f"input length {args.input_len} + output length {max(lengths)} exceeds "
                         f"max_model_len {max_model_len}.")


def _mean(xs):
    return statistics.fmean(xs) if xs else None


class Profiler:
    """State of one run; `run()` returns the process exit code."""

    def __init__(self, args):
        from tpu_engine.cli import engine_kwargs
        from tpu_engine.engine import EngineConfig
        from tpu_engine.setup import resolve_limits
        self.args = args
        self.window = plan_window(args)
        self.lengths = workload.steps_per_request(args.mode, args.batch_size, args.output_len, args.n)
        self.engine_kwargs = engine_kwargs(args)
        config = EngineConfig(model=args.model, **self.engine_kwargs)
        _, max_len, _ = resolve_limits(config)
        max_batched = args.max_num_batched_tokens or max_len
        check_limits(args, self.lengths, max_len, max_batched, config.max_num_seqs)
        self.root = capture.check_writable_dir(args.profile_result_dir)
        capture.check_port_free(args.profiler_port)
        self.problems: list[str] = []
        self.published: list[str] = []
        self.peaks: dict | None = None

    # ---- passes ---------------------------------------------------------------------------
    def _one_pass(self) -> float:
        t = time.perf_counter()
        self.llm.generate(self.prompts, self.params, use_tqdm=False)
        return time.perf_counter() - t

    def run(self) -> int:
        from tpu_engine import LLM, SamplingParams
        from tpu_engine.compile import compile_stats
        args = self.args
        self.llm = LLM(args.model, **self.engine_kwargs)
        engine = self.llm.llm_engine
        self.server = capture.start_server(args.profiler_port)  # noqa: F841 (kept alive)
        self.prompts = workload.random_prompts(args.batch_size, args.input_len,
                                               engine.model_config.vocab_size, args.seed)
        self.params = [SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=n) for n in self.lengths]
        print(f"Profiling {args.model}: batch {args.batch_size}, input {args.input_len} tokens, "
              f"{args.mode} ({_describe_lengths(self.lengths)}), capture: {_describe_window(self.window)}")

        print("Warming up...")
        warm = [self._one_pass() for _ in tqdm(range(args.num_iters_warmup), desc="Warmup iterations")]
        if warm:
            print(f"Average warmup latency: {_mean(warm):.4f}s")

        self.steps = steps = manifest.StepLog()
        unsubscribe = engine.events.subscribe(steps.on_event)
        self.staging = staging = capture.Staging(self.root)
        self.compiles_before = compile_stats()
        self.warm, self.profiled = warm, []
        detached = None
        self.interrupted = False
        print(f"Profiling (results will be saved to '{args.profile_result_dir}')...")
        self.passes_start = time.time()
        try:
            try:
                if self.window.kind == "env":
                    detached = capture.DetachedTrace(args.profiler_port, staging.path,
                                                     self.window.delay_ms, self.window.duration_ms)
                    detached.start()
                    if self.window.delay_ms == 0:
                        time.sleep(1.0)  # the server needs a moment to begin tracing
                    self.passes_start = time.time()
                for i in tqdm(range(args.num_iters), desc="Profile iterations"):
                    self._profiled_pass(i)
            except KeyboardInterrupt:
                self.interrupted = True
                print("interrupted: finishing the capture made so far...", file=sys.stderr)
            self.passes_end = time.time()
            unsubscribe()
            if self.profiled:
                print(f"Average profile latency: {_mean(self.profiled):.4f}s")
                if warm:
                    print(f"Profiled / unprofiled mean latency: {_mean(self.profiled) / _mean(warm):.3f}")
            if detached:
                self._finish_detached(detached)
        except KeyboardInterrupt:
            print("interrupted again: discarding the unfinished capture.", file=sys.stderr)
            self.interrupted = True
        finally:
            staging.discard()
        compiles = compile_stats() - self.compiles_before
        if compiles.compiles:
            self.problems.append(f"{compiles.compiles} XLA compilation(s) happened during the profiled "
                                 f"passes ({compiles.compile_time_s:.2f}s); the capture includes them.")
        for p in self.problems:
            print(f"warning: {p}", file=sys.stderr)
        if self.published:
            print(f"View with: tensorboard --logdir {args.profile_result_dir}")
        code = 130 if self.interrupted else 0 if self.published and not self.problems else 1
        if detached and detached.alive:
            # A trace thread still inside the profiler client would abort the interpreter's
            # exit; everything worth keeping is written, so leave at once.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code

    def _profiled_pass(self, i: int) -> None:
        """One timed pass; a phase window is exported after the pass, outside the timing."""
        self.steps.pass_index = i
        if self.window.kind != "phase":
            self.profiled.append(self._one_pass())
            return
        w = self.window
        window = capture.PhaseWindow(w.phase, w.max_steps, w.min_batch, w.min_kv_len)
        off = self.llm.llm_engine.events.subscribe(window.on_event)
        try:
            self.profiled.append(self._one_pass())
        finally:
            window.close()
            off()
            self._finish_phase(window, i)

    def _record(self, **capture_info) -> dict:
        from tpu_engine.compile import compile_stats
        from ..analysis.roofline import machine_peaks
        args, engine = self.args, self.llm.llm_engine
        described = engine.describe()
        if self.peaks is None:  # measured once, between passes (outside any timing)
            self.peaks = machine_peaks(described["platform"], described["device_kind"])
        return dict(
            command=manifest.command_line(), args=vars(args), env=manifest.environment(),
            versions=manifest.versions(), engine=described,
            model_config=dataclasses.asdict(engine.model_config), peaks=self.peaks,
            window=dataclasses.asdict(self.window),
            workload=dict(mode=args.mode, output_lengths=self.lengths,
                          expected_decode_batches=workload.decode_batch_sizes(self.lengths)),
            latency_s=dict(warmup=self.warm, profiled=self.profiled, warmup_mean=_mean(self.warm),
                           profiled_mean=_mean(self.profiled)),
            compiles=dict(warmup=dataclasses.asdict(engine.warmup_stats),
                          profiled_passes=dataclasses.asdict(compile_stats() - self.compiles_before)),
            capture=capture_info, interrupted=self.interrupted)

    # ---- finishing captures ---------------------------------------------------------------
    def _finish_detached(self, trace) -> None:
        opens, passes_end = trace.window_opens_at, self.passes_end
        if opens > passes_end:
            self.problems.append(
                f"profiling is late: the profiled passes ended {opens - passes_end:.2f}s before the "
                f"capture window opened ({DELAY_ENV}={trace.delay_ms}); lower the delay or raise --num-iters.")
        remaining = max(0.0, opens + trace.duration_ms / 1000 - time.time())
        if remaining > 0.5:
            print(f"Waiting {remaining:.1f}s for the capture window to close...")
        arrived = trace.wait()
        runs = self.staging.runs()
        if not arrived or not runs:
            why = f" ({trace.error})" if trace.error else ""
            self.problems.append(f"no capture arrived from the profiler server on port {trace.port}{why}.")
            return
        record = self._record(requested_at=trace.requested_at, window_opens_at=opens,
                              passes_wall=[self.passes_start, passes_end],
                              written_after_passes_s=time.time() - passes_end)
        self._publish(runs[-1], None, record)

    def _finish_phase(self, w: capture.PhaseWindow, i: int) -> None:
        before = set(self.staging.runs())
        if not w.export(self.staging.path):
            self.problems.append(f"no step of pass {i + 1} matched the capture window "
                                 f"({_describe_window(self.window)}); nothing was captured.")
            return
        new = [r for r in self.staging.runs() if r not in before]
        record = self._record(pass_index=i, window_opened=w.opened_at, window_closed=w.closed_at,
                              window_steps=w.steps, written_after_pass_s=time.time() - w.closed_at)
        self._publish(new[-1], w.phase, record, expected_steps=w.steps)

    def _publish(self, run_dir, phase, record, expected_steps=None):
        try:
            check = check_capture(run_dir)
        except ValueError as e:
            self.problems.append(f"the capture could not be verified and was discarded: {e}")
            return
        found = sorted(n for v in check.steps.values() for n in v)
        rows = self.steps.select(found)
        if phase is None:  # env window: name it after what it holds
            phase = "-".join(p for p in ("prefill", "decode") if check.steps.get(p)) or "idle"
            first = self.steps.steps[0]["step"] if self.steps.steps else None
            if not found:
                self.problems.append("the capture holds no engine step: the window missed the profiled "
                                     "passes (check the delay and duration).")
            elif first is not None and found[0] > first:
                missed = sum(1 for s in self.steps.steps if s["step"] < found[0])
                print(f"note: the capture window opened after the passes began; it misses their first "
                      f"{missed} step(s).")
        elif expected_steps is not None and found != sorted(expected_steps):
            self.problems.append(f"the {phase} capture holds steps {found} but the window ran steps "
                                 f"{sorted(expected_steps)}.")
        record["verification"] = check.record()
        dest = capture.publish_run(self.staging, run_dir, phase, rows, record)
        self.published.append(dest)
        tqdm.write(f"Capture: {os.path.relpath(dest)}: {check.describe()}")


def _describe_lengths(lengths: list[int]) -> str:
    if len(set(lengths)) == 1:
        return f"{lengths[0]} output tokens each"
    return "decode batches " + ", ".join(map(str, workload.decode_batch_sizes(lengths)))


def _describe_window(w: Window) -> str:
    if w.kind == "env":
        return f"env window, delay {w.delay_ms} ms, duration {w.duration_ms} ms"
    extra = []
    if w.max_steps:
        extra.append(f"first {w.max_steps} step(s)")
    if w.min_batch > 1:
        extra.append(f"batch >= {w.min_batch}")
    if w.min_kv_len:
        extra.append(f"KV length >= {w.min_kv_len}")
    return f"{w.phase} steps" + (f" ({', '.join(extra)})" if extra else "")

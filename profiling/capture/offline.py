"""One offline profiling run (`python -m profiling capture`, `scripts/profiling.py`): check
everything, load and warm up, run the profiled passes inside the capture window(s), then
publish each capture with its manifest and run record (`publish.py`).

Windows keep one protocol (windows.py): an env window gives one capture over the passes, a
phase window one capture per profiled pass; either is exported after its passes, so that
writing it is not timed.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

from tqdm import tqdm

from tpu_engine.cli import check_profiler_port

from ..runs.parts import Peaks
from ..runs.record import CaptureTiming, Compiles, Latencies, RunRecord
from . import peaks, store, workload
from .interrupts import PAUSE_ENV, Interrupts, from_interrupt, pause_point
from .profilers import profiler_for
from .publish import publish, settle_stale_staging
from .record import StepLog, record_of
from .cli import ALL_INTERFACES
from .windows import Captured, CaptureWindow, make_window, plan_window


def check_limits(args, lengths: list[int], max_model_len: int, max_batched: int) -> None:
    """vLLM's checks on each request against the engine's limits, the overall limit first. A
    batch larger than the decode slots, or than one prefill step holds, waits in the queue."""
    if args.input_len + max(lengths) > max_model_len:
        raise ValueError(f"input length {args.input_len} + output length {max(lengths)} exceeds "
                         f"max_model_len {max_model_len}; raise --max-model-len or shorten the request.")
    if args.input_len > max_batched:
        raise ValueError(f"input length {args.input_len} exceeds max_num_batched_tokens {max_batched}; "
                         f"raise --max-num-batched-tokens.")


def queue_note(batch_size: int, input_len: int, max_num_seqs: int, max_batched: int) -> str | None:
    """One line when the batch cannot all run at once (vLLM queues the rest, and so do we)."""
    per_prefill = min(max_num_seqs, max_batched // input_len)
    if batch_size <= per_prefill:
        return None
    if batch_size > max_num_seqs:
        return (f"batch size {batch_size} exceeds max_num_seqs {max_num_seqs}: {max_num_seqs} requests run "
                f"at a time, the other {batch_size - max_num_seqs} wait in the queue (as in vLLM).")
    return (f"batch size {batch_size} x input length {input_len} exceeds max_num_batched_tokens "
            f"{max_batched}: each prefill step holds {per_prefill} prompts, the rest wait (as in vLLM).")


def _mean(xs):
    return statistics.fmean(xs) if xs else None


class Profiler:
    """State of one run; `run()` returns the process exit code. Every check that can fail on
    the user's input runs in the constructor, before the model loads."""

    def __init__(self, args):
        from tpu_engine.cli import engine_config
        from tpu_engine.scheduler import ExpectedRequests
        self.args = args
        self.window = plan_window(args)
        self.workload = workload.plan(args.mode, args.batch_size, args.output_len, args.n)
        # One decode slot per request of the batch unless asked; the run knows its requests, so
        # warm-up compiles only the shapes they use.
        self.config = config = engine_config(args, max_num_seqs=args.batch_size, expected=ExpectedRequests(
            tuple((args.input_len, n) for n in self.workload.output_lengths)))
        limits = config.limits
        check_limits(args, self.workload.output_lengths, limits.max_model_len, limits.max_prefill)
        self.queue_note = queue_note(args.batch_size, args.input_len, config.max_num_seqs, limits.max_prefill)
        self.root = store.check_writable_dir(args.profile_result_dir)
        self.profiler = profiler_for(config.backend)  # torch_xla's or JAX's, as the engine
        # XLA's profiler server listens on every interface, so it starts only when asked.
        self.port = args.profiler_port if args.profiler_host in ALL_INTERFACES else None
        if self.port is not None:
            check_profiler_port(self.port)
        self.problems: list[str] = []
        self.published: list[str] = []
        self.peaks: Peaks | None = None
        self.warm: list[float] = []
        self.profiled: list[float] = []
        self.interrupts = Interrupts()   # Ctrl-C policy: see interrupts.py
        self.spanning: CaptureWindow | None = None  # a window over all the passes (env)
        for line in settle_stale_staging(self.root):  # left by a killed run; after every check
            print(f"note: {line}")

    @property
    def interrupted(self) -> bool:
        return self.interrupts.stopped

    def run(self) -> int:
        try:
            self._load()
            self._warm_up()
        except BaseException as e:
            if not from_interrupt(e):
                raise
            print("interrupted before the profiled passes: nothing was captured.", file=sys.stderr)
            return 130
        self.steps = StepLog()
        unsubscribe = self.engine.events.subscribe(self.steps.on_event)
        self.staging = store.Staging(self.root)
        self.compiles_before = self.engine.compile_stats()
        print(f"Profiling (results will be saved to '{self.args.profile_result_dir}')...")
        try:
            try:
                self._profiled_passes()
            except BaseException as e:
                if not from_interrupt(e):
                    raise
                if not self.interrupts.stopped:  # a window over all passes (a per-pass one says it itself)
                    self.interrupts.passes_interrupted(self.spanning.label)
                    self.spanning.end(interrupted=True)
                if self.interrupts.abandoned:
                    raise
            unsubscribe()
            self._report_latency()
            if self.spanning:
                with self.interrupts.finishing(self.spanning.label):
                    self._finish(self.spanning)
        except BaseException as e:  # Ctrl-C again while a capture was finishing: it is dropped
            if not from_interrupt(e):
                raise
            self.interrupts.count = max(self.interrupts.count, 2)
        finally:
            self._discard_staging()
        return self._exit()

    def _discard_staging(self) -> None:
        """Remove the staging dir; say so if it held a capture (one that Ctrl-C abandoned)."""
        if self.interrupts.abandoned and self.staging.runs():
            print("interrupted again: the unfinished capture was discarded.", file=sys.stderr)
        self.staging.discard()

    # ---- passes ---------------------------------------------------------------------------
    def _load(self) -> None:
        from tpu_engine import LLM, SamplingParams
        args = self.args
        self.llm = LLM.from_config(self.config)
        self.engine = self.llm.llm_engine
        if self.port is not None:
            self.server = self.profiler.start_server(self.port)  # kept alive while we run
            print(f"note: XLA's profiler server listens on port {self.port} of every interface "
                  f"(--profiler-host {args.profiler_host}).")
        self.prompts = workload.random_prompts(args.batch_size, args.input_len,
                                               self.engine.model_config.vocab_size, args.seed)
        self.params = [SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=n)
                       for n in self.workload.output_lengths]
        print(f"Profiling {args.model}: batch {args.batch_size}, input {args.input_len} tokens, "
              f"{args.mode} ({self.workload.describe()}), capture: {self.window.describe()}")
        if self.queue_note:
            print(f"note: {self.queue_note}")

    def _one_pass(self) -> float:
        t = time.perf_counter()
        self.llm.generate(self.prompts, self.params, use_tqdm=False)
        return time.perf_counter() - t

    def _warm_up(self) -> None:
        print("Warming up...")
        pause_point("warmup")
        self.warm = [self._one_pass() for _ in tqdm(range(self.args.num_iters_warmup), desc="Warmup iterations")]
        if self.warm:
            print(f"Average warmup latency: {_mean(self.warm):.4f}s")

    def _profiled_passes(self) -> None:
        """Run the profiled passes, each in its own window or all in one (`self.spanning`,
        still to be finished)."""
        if not self.window.per_pass:
            self._pause_in_pass()
            self.spanning = self._open(0)
        for i in tqdm(range(self.args.num_iters), desc="Profile iterations"):
            self.steps.pass_index = i
            if self.window.per_pass:
                self._windowed_pass(i)
            else:
                self.profiled.append(self._one_pass())
        if self.spanning:
            self.spanning.end()

    def _open(self, pass_index: int) -> CaptureWindow:
        window = make_window(self.window, self.profiler, self.port, pass_index)
        self._off = self.engine.events.subscribe(window.on_event)
        window.begin(self.staging.path)
        return window

    def _pause_in_pass(self) -> None:
        """PROFILING_PAUSE_AT=pass: wait after each engine step of the profiled passes (once its
        end is recorded by everything subscribed before)."""
        if "pass" in os.environ.get(PAUSE_ENV, ""):
            self.engine.events.subscribe(lambda e: e.kind == "end" and pause_point("pass"))

    def _windowed_pass(self, i: int) -> None:
        """One timed pass in its own window, exported after the pass (outside the timing).
        Ctrl-C in the pass stops the run, but what the window holds so far is still saved."""
        window = self._open(i)
        self._pause_in_pass()
        cut = False
        try:
            self.profiled.append(self._one_pass())
        except BaseException as e:
            if not from_interrupt(e):
                raise
            cut = True
            self.interrupts.passes_interrupted(f"{window.label} so far")
        finally:
            with self.interrupts.finishing(window.label):
                window.end(interrupted=cut)
                self._finish(window)
        if self.interrupts.stopped:
            raise KeyboardInterrupt

    def _report_latency(self) -> None:
        if self.profiled:
            print(f"Average profile latency: {_mean(self.profiled):.4f}s")
            if self.warm:
                print(f"Profiled / unprofiled mean latency: {_mean(self.profiled) / _mean(self.warm):.3f}")

    def _exit(self) -> int:
        compiles = self.engine.compile_stats() - self.compiles_before
        if compiles.compiles:
            self.problems.append(f"{compiles.compiles} XLA compilation(s) happened during the profiled "
                                 f"passes ({compiles.compile_time_s:.2f}s); the capture includes them.")
        for p in self.problems:
            print(f"warning: {p}", file=sys.stderr)
        if self.published:
            print(f"View with: tensorboard --logdir {self.args.profile_result_dir}")
        if self.interrupted:
            kept = f"{len(self.published)} verified capture(s) kept" if self.published else "no capture was saved"
            print(f"interrupted: {kept}.", file=sys.stderr)
        code = 130 if self.interrupted else 0 if self.published and not self.problems else 1
        if self.spanning and self.spanning.busy:
            # A trace thread still inside the profiler client would abort the interpreter's
            # exit; everything worth keeping is written, so leave at once.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code

    # ---- finishing captures ---------------------------------------------------------------
    def _record(self, capture: CaptureTiming) -> RunRecord:
        if self.peaks is None:  # measured once, between passes (outside any timing)
            self.peaks = peaks.machine_peaks(self.engine.describe().device, measure=True)
        return record_of(
            self.engine, peaks=self.peaks, window=self.window, capture=capture,
            compiles=Compiles(self.engine.warmup_stats, self.engine.compile_stats() - self.compiles_before),
            args=vars(self.args), workload=self.workload, latency_s=Latencies(self.warm, self.profiled))

    def _finish(self, window: CaptureWindow) -> None:
        """Export a window's capture and publish it; what went wrong is one problem line."""
        self._off()
        captured: Captured = window.export(abandon=lambda: self.interrupts.abandoned)
        if captured.problem:
            self.problems.append(captured.problem)
        if captured.run_dir is None:
            return
        self.interrupts.checkpoint("export")
        record = self._record(captured.timing)
        try:
            done = publish(self.staging, captured, self.steps, record, checkpoint=self.interrupts.checkpoint)
        except ValueError as e:
            self.problems.append(f"the capture was discarded: {str(e).rstrip('.')}.")
            return
        self.problems += done.problems
        for note in done.notes:
            print(f"note: {note}")
        self.published.append(done.run_dir)
        tqdm.write(f"Capture: {os.path.relpath(done.run_dir)}: {done.verification.describe()}")

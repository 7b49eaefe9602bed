"""Process-level behaviour: CPU fallback and the persistent compilation cache (subprocesses,
since both are fixed when torch_xla starts)."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTICE = "no TPU found; running on PJRT_DEVICE=CPU"


def python(code: str, env: dict) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)


def test_cpu_fallback_is_announced_once_and_user_choice_respected():
    code = ("from tpu_engine.backends.torch_xla.platform import platform as s; import os; "
            "print(s(), s(), os.environ['PJRT_DEVICE'])")
    env = {k: v for k, v in os.environ.items() if k != "PJRT_DEVICE"}
    proc = python(code, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["CPU", "CPU", "CPU"]
    assert proc.stderr.count(NOTICE) == 1
    proc = python(code, {**env, "PJRT_DEVICE": "CPU"})
    assert proc.stdout.split() == ["CPU", "CPU", "CPU"] and NOTICE not in proc.stderr


def test_persistent_cache_dir_receives_compiled_graphs(tmp_path, llama_dir):
    cache = tmp_path / "xla_cache"
    code = (f"from tpu_engine import LLM\n"
            f"llm = LLM({llama_dir!r}, max_model_len=32, max_num_seqs=1, compilation_cache_dir={str(cache)!r})\n"
            f"s = llm.llm_engine.warmup_stats\n"
            f"print(s.compiles, s.cache_misses, llm.llm_engine.runner.cache_dir)\n")
    proc = python(code, {**os.environ, "PJRT_DEVICE": "CPU"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    compiles, misses, used = proc.stdout.split()[-3:]
    assert used == str(cache)
    assert int(compiles) > 0 and int(misses) > 0  # first process: every cached graph is a miss
    assert len(os.listdir(cache)) >= int(misses)  # ... and is written to the cache dir


def test_unwritable_cache_dir_is_a_clear_error(tmp_path, llama_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = (f"from tpu_engine import LLM\n"
            f"try:\n    LLM({llama_dir!r}, max_model_len=32, compilation_cache_dir={str(blocker / 'sub')!r})\n"
            f"except ValueError as e:\n    print('ValueError:', e)\n")
    proc = python(code, {**os.environ, "PJRT_DEVICE": "CPU"})
    assert "ValueError: compilation cache dir" in proc.stdout and "cannot be created" in proc.stdout

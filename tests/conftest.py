import os

os.environ.setdefault("PJRT_DEVICE", "CPU")
# Subprocesses (scripts/*.py, servers, CLIs) import this checkout, not whatever copy of the
# package is installed: the suite tests the code beside it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import pytest  # noqa: E402

from tests.models import make_hf_model  # noqa: E402
from tpu_engine.backends import registry  # noqa: E402

MARKERS = {
    "slow": "builds an engine, a capture or a server (the fast subset is -m 'not slow')",
    "server": "starts the OpenAI server",
    "e2e": "drives TensorBoard in a real browser",
}
# Tests that use one of these session captures build an engine and profile it: slow.
CAPTURES = {"prefill_capture", "decode_capture", "env_capture", "all_capture", "all_analysis", "requests_capture"}


def pytest_configure(config):
    for name, what in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")
    for name in registry.names():
        config.addinivalue_line("markers", f"{name}: runs the {name} backend")


def pytest_collection_modifyitems(items):
    for item in items:
        if CAPTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return make_hf_model(str(tmp_path_factory.mktemp("llama")), "llama")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return make_hf_model(str(tmp_path_factory.mktemp("qwen2")), "qwen2")


# ---- real captures made once per session by scripts/profiling.py (tests/captures.py) ----
@pytest.fixture(scope="session")
def prefill_capture(tmp_path_factory, llama_dir):
    """Exact prefill window, lazy mode with XLA_HLO_DEBUG=1 (module names in the HLO). A batch
    of 6 in 4 slots of 64 tokens: packed prefills of 3 and 1 prompts, the other 2 queued."""
    from tests.captures import capture, profiling_env
    return capture(str(tmp_path_factory.mktemp("prefill")), llama_dir,
                   "--input-len", "20", "--output-len", "4", "--batch-size", "6",
                   "--enforce-eager", "--profile-phase", "prefill",
                   env=profiling_env(XLA_HLO_DEBUG=1))


@pytest.fixture(scope="session")
def decode_capture(tmp_path_factory, llama_dir):
    """Exact decode window over a run_to_completion batch (4 requests, 1 finishing per step),
    with module names turned off (XLA_HLO_DEBUG=0)."""
    from tests.captures import capture, profiling_env
    return capture(str(tmp_path_factory.mktemp("decode")), llama_dir,
                   "--input-len", "8", "--batch-size", "4", "--enforce-eager",
                   "--profile-phase", "decode", "run_to_completion", "-n", "1",
                   env=profiling_env(XLA_HLO_DEBUG=0))


@pytest.fixture(scope="session")
def env_capture(tmp_path_factory, llama_dir):
    """The seed's env window: a detached trace with a delay and a duration; compiled (dynamo)
    steps, with XLA_HLO_DEBUG left for profiling.py to set."""
    from tests.captures import capture, profiling_env
    return capture(str(tmp_path_factory.mktemp("env")), llama_dir,
                   "--input-len", "8", "--output-len", "24", "--batch-size", "4", "--num-iters", "100",
                   env=profiling_env(VLLM_TPU_PROFILE_DELAY_MS=700, VLLM_TPU_PROFILE_DURATION_MS=1500))


@pytest.fixture(scope="session")
def all_capture(tmp_path_factory, llama_dir):
    """Every step of one pass (prefill and decode), lazy mode with XLA_HLO_DEBUG=1: the
    analysis tests' layer-wise input."""
    from tests.captures import capture, profiling_env
    return capture(str(tmp_path_factory.mktemp("all")), llama_dir,
                   "--input-len", "12", "--output-len", "6", "--batch-size", "3",
                   "--enforce-eager", "--profile-phase", "all",
                   env=profiling_env(XLA_HLO_DEBUG=1))


@pytest.fixture(scope="session")
def requests_capture(tmp_path_factory, llama_dir):
    """Every step of one pass of 6 requests in 4 slots (JAX, about 20 s): prefills of 3 packed
    prompts and of 1, then requests finishing one per decode step (run_to_completion) while the
    other 2 wait in the queue and join freed slots. (prefill_capture holds only its first two
    prefill steps: no decode, no queued request.)"""
    from tests.captures import capture
    return capture(str(tmp_path_factory.mktemp("requests")), llama_dir, "--backend", "jax",
                   "--input-len", "20", "--batch-size", "6", "--profile-phase", "all", "run_to_completion", "-n", "1")


@pytest.fixture(scope="session")
def all_analysis(all_capture):
    """The analysis of `all_capture`, which must have succeeded."""
    assert all_capture.proc.returncode == 0, all_capture.proc.stderr[-3000:]
    from profiling.analysis.analysis import Analysis
    return Analysis.load(all_capture.run)


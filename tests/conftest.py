import os

os.environ.setdefault("PJRT_DEVICE", "CPU")

import pytest  # noqa: E402

from tests.models import make_hf_model  # noqa: E402


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return make_hf_model(str(tmp_path_factory.mktemp("llama")), "llama")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return make_hf_model(str(tmp_path_factory.mktemp("qwen2")), "qwen2")

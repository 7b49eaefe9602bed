"""A full disk, on a real 1 MB tmpfs (mounted by root, as in CI; skipped with one line where
mounting is not allowed): the export or the capture fails with one sentence saying what and
where, exit 2, and nothing half-written is left behind."""
from __future__ import annotations

import os
import shutil

import pytest

from profiling.cli import cli
from tests.backends import backend_params
from tests.captures import capture, profiling_env, proc_output
from tests.reliability import failed, fill, listing, one_sentence, run_main, small_tmpfs

pytestmark = pytest.mark.slow


def test_export_into_a_full_disk_says_where_and_leaves_nothing(all_capture, tmp_path):
    assert all_capture.proc.returncode == 0, proc_output(all_capture.proc)
    run = shutil.copytree(all_capture.run, str(tmp_path / "run"))
    with small_tmpfs(str(tmp_path / "disk")) as disk:
        fill(disk, 64 * 1024)  # room for the first exports, not for the plots that follow them
        base = os.path.join(disk, "x")
        res = run_main(cli, ["summarize", run, "--json", base + ".json", "--csv", base,
                             "--chrome-trace", base + ".json.gz", "--plots", base])
        failed(res, "cannot write", disk, "No space left on device")
        assert listing(disk) == ["filler"]


@pytest.mark.parametrize("backend", backend_params())
def test_capture_into_a_full_disk_says_where_and_leaves_nothing(llama_dir, tmp_path, backend):
    """The capture (about 270 kB) does not fit in what is left of the profile dir. (JAX's
    export writes the file itself: its OSError was a traceback.)"""
    with small_tmpfs(str(tmp_path / "profiles")) as disk:
        fill(disk, 128 * 1024)
        cap = capture(disk, llama_dir, "--input-len", "12", "--output-len", "6", "--batch-size", "3",
                      "--enforce-eager", "--profile-phase", "all", "--backend", backend,
                      env=profiling_env(XLA_HLO_DEBUG=1))
        assert cap.proc.returncode == 2, proc_output(cap.proc)
        assert "Traceback" not in cap.proc.stderr, proc_output(cap.proc)
        last = cap.proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: "), proc_output(cap.proc)
        one_sentence(last, f"cannot write the capture into {disk}", "No space left on device")
        assert listing(disk) == ["filler"]  # no run, no staging folder

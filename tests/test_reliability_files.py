"""Damaged run files and unwritable exports: `summarize`, `compare` and `service parse` end in
exit 2 with one sentence naming the file (and line and field), never a traceback, and leave no
half-written output. The run dirs are copies of a real capture (`all_capture`); the events file
is in test_reliability_events.py."""
from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiling.analysis import compare
from profiling.analysis.analysis import Analysis, Step
from profiling.cli import cli
from profiling.export import chrome_trace, files, text
from profiling.runs.files import RunFileError
from profiling.runs.record import read_manifest, read_run_record
from tests.reliability import JSON, failed, one_sentence, run_main
from tests.servers import ROOT

pytestmark = pytest.mark.slow

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def run_src(all_capture) -> str:
    assert all_capture.proc.returncode == 0, all_capture.proc.stderr[-3000:]
    return all_capture.run


@pytest.fixture
def run(run_src, tmp_path) -> str:
    """A private copy of the real run, to damage."""
    return shutil.copytree(run_src, str(tmp_path / "run"))


def _lines(run: str) -> list[dict]:
    with open(os.path.join(run, "manifest.jsonl")) as f:
        return [json.loads(line) for line in f]


def _write_lines(run: str, lines: list) -> None:
    with open(os.path.join(run, "manifest.jsonl"), "w") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))


def _set_line(key, value):
    def damage(run):
        lines = _lines(run)
        lines[0][key] = value
        _write_lines(run, lines)
    return damage


def _without(key):
    def damage(run):
        lines = _lines(run)
        del lines[0][key]
        _write_lines(run, lines)
    return damage


def _replace(name: str, data: bytes | None):
    """The file `name` replaced by `data` (None: a directory)."""
    def damage(run):
        path = os.path.join(run, name)
        os.remove(path)
        if data is None:
            os.mkdir(path)
        else:
            with open(path, "wb") as f:
                f.write(data)
    return damage


def _symlink(name: str, target: str):
    def damage(run):
        os.remove(os.path.join(run, name))
        os.symlink(target, os.path.join(run, name))
    return damage


def _set_info(*path_value):
    *path, value = path_value

    def damage(run):
        with open(os.path.join(run, "run_info.json")) as f:
            data = json.load(f)
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with open(os.path.join(run, "run_info.json"), "w") as f:
            json.dump(data, f)
    return damage


DAMAGE = {  # name: (damage, fragments of the message besides the file name)
    "manifest line without step": (_without("step"), ["line 1", "'step'"]),
    "manifest line that is a list": (lambda r: open(os.path.join(r, "manifest.jsonl"), "a").write("[1, 2]\n"),
                                     ["line 7", "list", "JSON object"]),
    "manifest step of the wrong type": (_set_line("step", "3"), ["line 1", "'step'", "'3'"]),
    "manifest request id not a string": (_set_line("request_ids", [1]), ["line 1", "request_ids"]),
    "manifest step that never ended": (_set_line("wall_end", None), ["line 1", "'wall_end'"]),
    "manifest NaN": (_set_line("wall_start", float("nan")), ["line 1", "NaN"]),
    "manifest 40-digit count": (_set_line("num_tokens", 10 ** 40), ["line 1", "'num_tokens'"]),
    "manifest not JSON": (_replace("manifest.jsonl", b"{\n"), ["line 1", "not valid JSON"]),
    "manifest not UTF-8": (_replace("manifest.jsonl", b"\xff\xfe\n"), ["not UTF-8"]),
    "manifest is a directory": (_replace("manifest.jsonl", None), ["is a directory"]),
    "manifest dangling symlink": (_symlink("manifest.jsonl", "nowhere.jsonl"), ["cannot read"]),
    "manifest symlink loop": (_symlink("manifest.jsonl", "manifest.jsonl"), ["cannot read"]),
    "manifest is a FIFO": (lambda r: (os.remove(os.path.join(r, "manifest.jsonl")),
                                      os.mkfifo(os.path.join(r, "manifest.jsonl"))), ["not a regular file"]),
    "run_info holding a string": (_replace("run_info.json", b'"hello"'), ["the string 'hello'", "JSON object"]),
    "run_info holding a list": (_replace("run_info.json", b"[]"), ["list", "JSON object"]),
    "run_info is a directory": (_replace("run_info.json", None), ["is a directory"]),
    "run_info nested 100000 deep": (_replace("run_info.json", b"[" * 100000 + b"]" * 100000), ["deeper than"]),
    "run_info nested 500 deep": (_replace("run_info.json", b'{"a":' * 500 + b"1" + b"}" * 500), ["deeper than"]),
    "run_info 5000-digit number": (_replace("run_info.json", b'{"peaks": ' + b"9" * 5000 + b"}"), ["not valid JSON"]),
    "run_info engine a string": (_set_info("engine", "x"), ["'engine'"]),
    "run_info device a list": (_set_info("engine", "device", [1]), ["'engine.device'"]),
    "run_info peak a string": (_set_info("peaks", "flops_per_s", "fast"), ["'peaks.flops_per_s'", "'fast'"]),
    "run_info negative layer count": (_set_info("model_config", "num_hidden_layers", -3), ["'num_hidden_layers'", "-3"]),
    "run_info rope_scaling a string": (_set_info("model_config", "rope_scaling", "llama3"), ["'model_config.rope_scaling'"]),
    "run_info compile stats without a field": (_set_info("compiles", "warmup", {}), ["'compiles'"]),
    "run_info latency a string": (_set_info("latency_s", "warmup", "slow"), ["'latency_s.warmup'"]),
    "run_info interrupted a string": (_set_info("interrupted", "no"), ["'interrupted'"]),
    "xplane is a directory": (lambda r: [os.remove(p) or os.mkdir(p) for p in glob.glob(f"{r}/*.xplane.pb")],
                              ["is a directory"]),
    "xplane truncated": (lambda r: [os.truncate(p, 1000) for p in glob.glob(f"{r}/*.xplane.pb")], ["XSpace"]),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_run_is_one_sentence_naming_the_file(run, run_src, case):
    damage, fragments = DAMAGE[case]
    damage(run)
    for argv in (["summarize", run], ["compare", run_src, run]):
        msg = failed(run_main(cli, argv), *fragments)
        assert msg.startswith(run) or f"capture {run}" in msg or f"read {run}" in msg, msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_manifest(run):
    os.chmod(os.path.join(run, "manifest.jsonl"), 0)
    failed(run_main(cli, ["summarize", run]), "cannot read", "Permission denied")


def test_unwritable_export_paths_write_nothing(run, tmp_path):
    a_dir = tmp_path / "a_dir.json"
    a_dir.mkdir()
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    cases = [(["--json", str(a_dir)], [str(a_dir)]),  # an existing directory
             (["--csv", str(a_file / "base")], [str(a_file)]),  # a folder that is a file
             (["--chrome-trace", ""], ["''"]),
             (["--json", str(tmp_path / "ok.json"), "--plots", str(a_file / "p")], [str(a_file)])]
    for flags, fragments in cases:
        failed(run_main(cli, ["summarize", run, *flags]), *fragments)
    assert sorted(os.listdir(tmp_path)) == ["a_dir.json", "plain", "run"]


# ---- property tests: any damage to a real run's files --------------------------------------------
def _analyse(base: Analysis, steps, record) -> None:
    """Everything summarize and compare compute from the records, on the real capture's ops."""
    by_step = {r.step: r for r in steps}
    fresh = [Step(s.phase, s.step, s.start_ns, s.end_ns, by_step.get(s.step)) for s in base.steps]
    programs = sorted({p for s in base.steps for p in s.programs})
    a = Analysis.from_parts(fresh, base.ops, programs, record, base.run_dir, base.xplane)
    text.render(a, 5, True)
    json.dumps(files.to_json(a), default=str)
    json.dumps(chrome_trace.build(a))
    compare.compare(base, a)


def _read_or_refuse(run: str, base: Analysis, *fragments: str) -> None:
    try:
        steps, record = read_manifest(run), read_run_record(run)
    except RunFileError as e:
        one_sentence(str(e), run, *fragments)
        return
    _analyse(base, steps, record)


@PROPERTY
@given(data=st.data())
def test_any_manifest_damage_is_refused_or_analysed(run_src, all_analysis, tmp_path_factory, data):
    run = shutil.copytree(run_src, str(tmp_path_factory.mktemp("m") / "run"))
    lines = _lines(run)
    i = data.draw(st.integers(0, len(lines) - 1))
    how = data.draw(st.sampled_from(["set", "delete", "json line", "text line"]))
    if how in ("set", "delete"):
        key = data.draw(st.sampled_from(sorted(lines[i])) | st.text(max_size=6))
        if how == "set":
            lines[i][key] = data.draw(JSON)
        else:
            lines[i].pop(key, None)
        _write_lines(run, lines)
    else:
        raw = json.dumps(data.draw(JSON)) if how == "json line" else data.draw(st.text(max_size=40))
        text_lines = [json.dumps(x) for x in lines]
        text_lines[i] = raw.replace("\n", " ")
        with open(os.path.join(run, "manifest.jsonl"), "w") as f:
            f.write("\n".join(text_lines) + "\n")
    _read_or_refuse(run, all_analysis)


def _paths(node, prefix=()):
    """Every key path of a JSON document."""
    out = [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out += _paths(v, prefix + (k,))
    return out


@PROPERTY
@given(data=st.data())
def test_any_run_info_damage_is_refused_or_analysed(run_src, all_analysis, tmp_path_factory, data):
    run = shutil.copytree(run_src, str(tmp_path_factory.mktemp("r") / "run"))
    with open(os.path.join(run, "run_info.json")) as f:
        doc = json.load(f)
    path = data.draw(st.sampled_from(_paths(doc)))
    value = data.draw(JSON)
    if not path:
        doc = value
    else:
        node = doc
        for k in path[:-1]:
            node = node[k]
        if data.draw(st.booleans()) and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = value
    with open(os.path.join(run, "run_info.json"), "w") as f:
        json.dump(doc, f)
    _read_or_refuse(run, all_analysis, "run_info.json")


def test_a_staging_symlink_to_a_verified_run_elsewhere_is_skipped_and_said(run_src, tmp_path):
    """`doctor` (and the next capture or server) settles stale staging: a `.staging-<pid>-<n>`
    that links to a folder outside the profile dir is never followed, so the verified run there
    stays where it is; a real stale staging holding a link to a run elsewhere is settled without it."""
    from profiling.doctor import check_staging
    outside = tmp_path / "elsewhere"
    shutil.copytree(run_src, str(outside / "plugins" / "profile" / "run"))
    before = sorted(os.listdir(outside / "plugins" / "profile" / "run"))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    pid = 2 ** 22 + 17                                 # above pid_max: no such process
    (profiles / f".staging-{pid}-1").symlink_to(outside)
    real = profiles / f".staging-{pid}-2"
    (real / "plugins" / "profile").mkdir(parents=True)
    (real / "plugins" / "profile" / "linked").symlink_to(outside / "plugins" / "profile" / "run")
    ok, line = check_staging(str(profiles))
    assert ok
    assert f"skipped {os.path.relpath(profiles / f'.staging-{pid}-1')}: it is named like a staging dir but is " \
           f"a link or not a directory inside the profile dir, so it is left alone." in line
    assert "a link inside staging is never followed." in line and "it held no capture" in line
    assert not (profiles / "plugins").exists()          # nothing was published from elsewhere
    assert sorted(os.listdir(outside / "plugins" / "profile" / "run")) == before
    assert os.path.islink(profiles / f".staging-{pid}-1") and not real.exists()


# ---- exports to devices, damaged and absurd captures ------------------------------------------
def test_exports_to_dev_stdout_or_a_link_to_a_device_are_written_in_place(run, tmp_path):
    """A rename would replace the device with a regular file (as root, /dev/null itself)."""
    proc = subprocess.run([sys.executable, "-m", "profiling", "summarize", run, "--json", "/dev/stdout"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    doc, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("\n{") + 1:])
    assert doc["context"]["run_dir"] == run and "wrote:\n  /dev/stdout" in proc.stdout
    link = tmp_path / "out.json"
    link.symlink_to("/dev/null")
    res = run_main(cli, ["summarize", run, "--json", str(link), "--csv", str(tmp_path / "t")])
    assert res.code == 0, res.err
    assert os.path.islink(link) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert glob.glob(str(tmp_path / "t_*.csv"))


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_bit_flipped_capture_is_analysed_or_one_sentence(run_src, tmp_path_factory, data):
    """A real capture with one bit flipped anywhere: either it still reads, or `summarize` says
    in one sentence that the capture is damaged (a DecodeError traceback before)."""
    run = shutil.copytree(run_src, str(tmp_path_factory.mktemp("flip") / "run"))
    xplane = glob.glob(os.path.join(run, "*.xplane.pb"))[0]
    raw = bytearray(open(xplane, "rb").read())
    at, bit = data.draw(st.integers(0, len(raw) - 1)), data.draw(st.integers(0, 7))
    raw[at] ^= 1 << bit
    open(xplane, "wb").write(bytes(raw))
    res = run_main(cli, ["summarize", run])
    if res.code != 0:
        failed(res, xplane)


@pytest.mark.parametrize("size", [256 << 20, 1 << 30], ids=["256 MB", "1 GB"])
def test_a_huge_zero_filled_capture_is_refused_at_once(tmp_path, size):
    """Sparse files of zeros: refused from their first byte, not walked (50 s for 256 MB before)."""
    path = tmp_path / "host.xplane.pb"
    with open(path, "wb") as f:
        f.truncate(size)
    failed(run_main(cli, ["summarize", str(path)]), str(path), "is not a readable XSpace protobuf")


def test_a_damaged_line_inside_a_plane_is_one_sentence(run_src, tmp_path):
    """A line's payload made unreadable: the planes load lazily, and the reader names the
    capture when it reaches the line (it raised protobuf's DecodeError)."""
    from profiling.trace import xspace
    src = glob.glob(os.path.join(run_src, "*.xplane.pb"))[0]
    space = xspace.load(src)
    plane = max(space.planes, key=lambda p: len(p._line_spans))
    start, end = plane._line_spans[0]
    raw = bytearray(open(src, "rb").read())
    raw[start:start + 2] = b"\x0f\xff"   # a wire type protobuf refuses
    damaged = tmp_path / "host.xplane.pb"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"capture {damaged} is damaged: line 0 of plane"):
        for p in xspace.load(str(damaged)).planes:
            list(p.iter_lines())

"""The benchmark's own logic that decides what is measured: the limit at the batch size formed
(interpolation), the OpenMP wait policy of the limit and of the servers, and how the report
states it. (The benchmark itself is a command, not a test: docs/benchmarks.md.)"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from bench import ab, report, run, servers
from bench.servers import child_pythonpath

ROWS = [{"batch": 8, "v": 800.0}, {"batch": 32, "v": 1100.0}, {"batch": 64, "v": 1200.0}]


def test_interpolate_is_linear_in_log2_of_the_batch_and_clamped():
    assert report.interpolate(ROWS, "v", 32) == (1100.0, 32)
    assert report.interpolate(ROWS, "v", 16) == (950.0, 8)  # halfway from 8 to 32 in log2; 8 and 32 tie, the first wins
    value, nearest = report.interpolate(ROWS, "v", 31.7)  # 800 + 300 * (log2(31.7) - 3) / 2
    assert value == pytest.approx(1097.96, abs=0.01) and nearest == 32
    assert report.interpolate(ROWS, "v", 1) == (800.0, 8)
    assert report.interpolate(ROWS, "v", 256) == (1200.0, 64)


def test_every_server_waits_passively_and_stray_settings_are_dropped(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("LATENTSERVE_MAX_BATCH_ROWS", "1")
    monkeypatch.setenv("BENCH_MODEL", "other")
    env = servers._base_env()
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "LATENTSERVE_MAX_BATCH_ROWS" not in env and "BENCH_MODEL" not in env
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the shell's does not reach the servers either
    assert servers._base_env()["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_limit_keeps_libgomps_default_unless_asked():
    assert run.parse_args([]).limit_omp_wait_policy == "default"
    assert run.parse_args(["--limit-omp-wait-policy", "passive"]).limit_omp_wait_policy == "passive"
    with pytest.raises(SystemExit):
        run.parse_args(["--limit-omp-wait-policy", "active"])


def test_the_limits_wait_policy_cannot_be_set_once_torch_is_loaded():
    import torch  # noqa: F401 - loaded in this process, as libgomp with it

    with pytest.raises(RuntimeError, match="torch is loaded already"):
        run.set_limit_omp_wait_policy("passive")


@pytest.mark.parametrize("policy, shell, expected", [
    ("passive", None, "PASSIVE"),
    ("passive", "ACTIVE", "PASSIVE"),
    ("default", "PASSIVE", "<unset>"),  # libgomp's default, whatever the shell had
])
def test_the_limits_wait_policy_is_set_before_torch_loads(policy, shell, expected):
    code = ("import os, sys; from bench import run; assert 'torch' not in sys.modules; "
            f"run.set_limit_omp_wait_policy({policy!r}); print(os.environ.get('OMP_WAIT_POLICY', '<unset>'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = child_pythonpath()
    if shell is not None:
        env["OMP_WAIT_POLICY"] = shell
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_the_report_says_how_the_threads_waited():
    on_cpu = report._omp_sentence({"limit_omp_wait_policy": "default", "device": "cpu"})
    assert "the in-process limit's use libgomp's default" in on_cpu and "makes it faster" in on_cpu
    on_gpu = report._omp_sentence({"limit_omp_wait_policy": "default", "device": "cuda"})
    assert "the in-process limit's use libgomp's default" in on_gpu and "faster" not in on_gpu  # measured on CPUs only
    assert "and so do the in-process limit's" in report._omp_sentence({"limit_omp_wait_policy": "passive"})
    assert "set by latentserve only" in report._omp_sentence({})  # a results file from before the option


# ---- bench.ab: two servers side by side ----

def test_ab_environment_pairs():
    assert ab.env_pair("LATENTSERVE_TORCH_THREADS=1") == ("LATENTSERVE_TORCH_THREADS", "1")
    assert ab.env_pair("OMP_WAIT_POLICY=") == ("OMP_WAIT_POLICY", "")  # empty: libgomp's default
    assert ab.env_pair("A=b=c") == ("A", "b=c")
    for bad in ("NOVALUE", "=1", "BAD KEY=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            ab.env_pair(bad)
    args = ab.parse_args(["--a", "HEAD~1", "--b-env", "X=1", "--b-env", "Y=2"])
    assert (args.a, args.b, args.a_env, args.b_env) == ("HEAD~1", ab.WORKTREE, [], [("X", "1"), ("Y", "2")])


def test_ab_summary_pairs_rounds_by_index():
    s = ab.summary([700.0, 760.0, 750.0], [720.0, 740.0, 780.0])
    assert (s["median_a"], s["median_b"], s["b_won"], s["rounds"]) == (750.0, 740.0, 2, 3)
    assert s["ratio_b_a"] == pytest.approx(740.0 / 750.0)
    cut = ab.summary([700.0, 760.0], [720.0])  # interrupted: only rounds both sides completed count
    assert (cut["median_a"], cut["median_b"], cut["b_won"], cut["rounds"]) == (700.0, 720.0, 1, 1)
    assert ab.summary([0.0], [10.0])["ratio_b_a"] is None  # A served nothing: no ratio
    assert ab.summary([], [])["rounds"] == 0


def test_ab_checks_out_a_revision_and_starts_its_server_from_there():
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ab.REPO, capture_output=True, text=True, check=False)
    if rev.returncode != 0:
        pytest.skip(f"not a usable git checkout: {rev.stderr.strip()}")  # a copy without .git: bench.ab needs git
    head = rev.stdout.strip()
    with ab.source_tree("HEAD") as tree:
        assert tree != ab.REPO and (tree / "app" / "__main__.py").is_file()
        assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True,
                              check=True).stdout.strip() == head
        spec = ab._spec(ab.parse_args([]), tree, [("OMP_WAIT_POLICY", "")], 8123, "side-A")
        assert spec.cwd == tree and spec.env["PYTHONPATH"].split(os.pathsep)[0] == str(tree)
        assert spec.env["OMP_WAIT_POLICY"] == "" and spec.env["LATENTSERVE_PORT"] == "8123"
    assert not tree.exists()  # the worktree is removed
    listed = subprocess.run(["git", "worktree", "list"], cwd=ab.REPO, capture_output=True, text=True, check=True).stdout
    assert str(tree) not in listed
    with ab.source_tree(ab.WORKTREE) as tree:
        assert tree == ab.REPO
    with pytest.raises(SystemExit, match="cannot check out 'no-such-revision'"), ab.source_tree("no-such-revision"):
        pass

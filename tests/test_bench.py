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
    split = report._omp_sentence({"limit_omp_wait_policy": "default", "device": "cpu"}, parts=2)
    assert "run as 2 parts of one thread each" in split and "makes it faster" not in split


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


# ---- what the report derives, and from what ----

def _cell(img_per_s: float, p50: float, p99: float, valid: bool = True) -> dict:
    return {"load": {"concurrency": 64, "n": 1}, "runs": [{"requests": 100}, {"requests": 110}],
            "median": {"img_per_s": img_per_s, "req_per_s": img_per_s, "p50_ms": p50, "p95_ms": p99, "p99_ms": p99,
                       "non_2xx": 0 if valid else 3, "valid": valid, "wrk_cpu_pct": 5.0, "server_cpu_pct": 160.0,
                       "other_cpu_pct": 2.0}}


def _results(litserve_valid: bool = True) -> dict:
    return {"limit": {"batch_sizes": [{"batch": 1, "forward_png_img_per_s": 400.0}, {"batch": 32, "forward_png_img_per_s": 1200.0}],
                      "single_image": {"padded_rows": 1, "latentserve_ms": 2.5, "baseline_handler_ms": 3.0,
                                       "runs_latentserve_ms": [2.5, 3.5, 2.4], "runs_baseline_handler_ms": [3.1, 3.0, 2.0]}},
            "servers": {
                "latentserve": {"title": "latentserve", "cells": {"c64": _cell(800.0, 80.0, 95.0) | {},
                                                                  "c1": _cell(190.0, 5.0, 7.0)}},
                "litserve": {"title": "LitServe", "cells": {"c64": _cell(400.0, 150.0, 190.0, valid=litserve_valid)}},
                "baseline": {"title": "plain FastAPI", "cells": {"c64": _cell(200.0, 300.0, 400.0),
                                                                 "c1": _cell(210.0, 4.6, 6.0)}},
            }}


def test_the_c1_expectation_takes_the_plain_servers_overhead_net_of_its_own_handler():
    results = _results()
    results["servers"]["latentserve"]["cells"]["c64"]["median"]["mean_batch_rows"] = 32.0
    c = report.ratios(results)["single_image_latency"]
    # overhead = 4.6 ms p50 - 3.0 ms of the plain handler's own work (not latentserve's 2.5)
    assert c["baseline_http_overhead_ms"] == pytest.approx(1.6)
    # the in-process difference window by window: -0.6, +0.5, +0.4 -> +0.4 (not 2.5 - 3.0 of the medians)
    assert c["inprocess_difference_ms"] == pytest.approx(0.4)
    assert c["expected_ms"] == pytest.approx(4.6 + 0.4)
    assert c["excess_ms"] == pytest.approx(0.0) and c["ratio"] == pytest.approx(1.0)
    assert c["padded_rows"] == 1 and c["valid"] is True
    md = "\n".join(report._ratios_md(report.ratios(results)))
    assert "| expected latentserve p50 (plain FastAPI p50 + the difference) | 5.000 |" in md


def test_a_ratio_against_a_failing_server_is_flagged_not_reported_as_a_win():
    ok = report.ratios(_results())["latentserve_vs_litserve"]
    assert ok["throughput_ratio"] == pytest.approx(2.0) and ok["valid"] is True
    bad = report.ratios(_results(litserve_valid=False))["latentserve_vs_litserve"]
    assert bad["valid"] is False
    md = "\n".join(report._ratios_md(report.ratios(_results(litserve_valid=False))))
    assert "**2.00x** (invalid: a cell had error answers)" in md
    assert "invalid" not in "\n".join(report._ratios_md(report.ratios(_results())))


def test_paired_shares_leave_out_pairs_whose_server_run_had_errors():
    pairs = [{"pct": 60.0, "limit_img_per_s": 1000.0, "server_img_per_s": 600.0, "valid": True},
             {"pct": 10.0, "limit_img_per_s": 1000.0, "server_img_per_s": 100.0, "valid": False},
             {"pct": 70.0, "limit_img_per_s": 1000.0, "server_img_per_s": 700.0, "valid": True}]
    s = run.summarize_pairs(pairs)
    assert (s["median_pct"], s["median_server_img_per_s"], s["valid_pairs"]) == (65.0, 650.0, 2)
    none = run.summarize_pairs([pairs[1]])
    assert none["median_pct"] is None and none["valid_pairs"] == 0
    paired = none | {"pairs": [pairs[1]], "batch": 32, "mean_batch_rows": 31.7, "seconds": 5}
    md = "\n".join(report._ratios_md({"share_of_limit_paired": paired}))
    assert "(0 of 1 pairs had no error answer and count): **n/a** (" in md and "(error answers: not counted)" in md


def test_the_servers_table_shows_what_else_used_the_cpu():
    table = report.servers_table(_results())
    assert table.splitlines()[0].endswith("| other CPU |")
    assert table.splitlines()[2].endswith("| 160% | 2% |")


def test_the_memory_table_reports_pss_and_the_requests_counted():
    results = _results()
    results["servers"]["latentserve"] |= {
        "memory_idle": {"main_kb": 300 * 1024, "tree_kb": 300 * 1024, "tree_pss_kb": 290 * 1024, "processes": 1},
        "memory_after": {"main_kb": 310 * 1024, "tree_kb": 310 * 1024, "tree_pss_kb": 299 * 1024, "processes": 1},
        "idle_cpu_pct": 0.4, "paired_share": {"pairs": [{"requests": 5000}, {"requests": 4000}]}}
    row = next(ln for ln in report._memory_table(results).splitlines() if ln.startswith("| latentserve |"))
    # two cells of 100 + 110 requests, plus the pairs' 9,000
    assert row == "| latentserve | 1 | 300.0 | 310.0 | 290.0 | 299.0 | 9,420 | 0% |"


def test_pss_and_the_machines_cpu_are_read_from_proc():
    pss, rss = servers.pss_kb(os.getpid()), servers.rss_kb(os.getpid())
    assert 0 < pss <= rss
    assert servers.pss_kb(2**22 + 12345) == 0  # no such process
    busy0, steal0 = servers.machine_cpu_seconds()
    sum(i * i for i in range(300_000))  # some CPU in this process
    busy1, steal1 = servers.machine_cpu_seconds()
    assert busy1 > busy0 >= 0 and steal1 >= steal0 >= 0


def test_ab_also_reports_the_median_of_the_rounds_own_ratios():
    s = ab.summary([700.0, 800.0, 750.0], [770.0, 760.0, 825.0])
    assert s["median_round_ratio"] == pytest.approx(1.1)  # 1.1, 0.95, 1.1
    assert s["ratio_b_a"] == pytest.approx(770.0 / 750.0)


# ---- the limit pads as the server pads, and times the plain server's handler ----

def test_the_limit_knows_the_servers_shapes_and_pads_its_paired_windows_to_them(tiny_weights):
    from bench import limit

    model = limit.load(tiny_weights, "tiny-gan", "cpu", 1, max_rows=16, server_max_rows=4)
    assert model.buckets == [1, 2, 4, 8, 16]  # the limit's table: every size an exact pass
    # the server's shapes: calibrated up to its own largest, 4 (the tiny GAN's rows agree from 2 rows on)
    assert model.server_buckets[-1] == 4 and set(model.server_buckets) <= {1, 2, 4}
    assert model.calibrated_min_rows == model.server_buckets[0]
    seen = []
    original = model.generate_rows

    def spy(z, y):
        seen.append(model._bucket(z.shape[0]))
        return original(z, y)

    model.generate_rows = spy
    assert limit.forward_png_rate(model, 3, 0.05) > 0
    assert set(seen) == {4} and model.buckets == [1, 2, 4, 8, 16]  # 3 rows padded to 4, the table's shapes back
    with pytest.raises(ValueError, match="exceed the largest batch shape 4"):
        limit.forward_png_rate(model, 5, 0.05)  # more rows than the server ever puts in a pass
    assert model.buckets == [1, 2, 4, 8, 16]
    bigger = limit.load(tiny_weights, "tiny-gan", "cpu", 1, max_rows=4, server_max_rows=16)  # a server above the table
    assert bigger.server_buckets[-1] == 16 and bigger.buckets[-1] == 16


def test_the_plain_servers_handler_is_timed_in_process(tiny_weights):
    import io

    import torch
    from PIL import Image

    from bench import limit
    from bench.baseline_fastapi import Baseline

    base = Baseline(tiny_weights, "tiny-gan", torch.device("cpu"), png_level=1)
    one, grid = Image.open(io.BytesIO(base.sample_png(1, 7))), Image.open(io.BytesIO(base.sample_png(16, 7)))
    assert (one.size, one.mode) == ((28, 28), "L") and grid.size == (8 * 30 + 2, 2 * 30 + 2)  # 2-pixel gaps
    assert base.sample_png(1, 7) == base.sample_png(1, 7) != base.sample_png(1, 8)  # seeded
    model = limit.load(tiny_weights, "tiny-gan", "cpu", 1, max_rows=8, server_max_rows=8)
    lines: list[str] = []
    out = limit.single_image(model, base, seconds=0.05, repeats=2, log=lines.append)
    assert out["padded_rows"] == model.server_buckets[0]
    assert len(out["runs_latentserve_ms"]) == len(out["runs_baseline_handler_ms"]) == 2
    assert 0 < out["latentserve_ms"] < 1000 and 0 < out["baseline_handler_ms"] < 1000
    assert f"a pass of {model.server_buckets[0]} row(s)" in lines[0]


def test_the_plain_server_loads_its_model_at_start_up_with_the_threads_asked(tiny_weights, monkeypatch):
    import torch
    from fastapi.testclient import TestClient

    from bench import baseline_fastapi

    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(tiny_weights))
    monkeypatch.setenv("BENCH_MODEL", "tiny-gan")
    monkeypatch.setenv("BENCH_TORCH_THREADS", "1")
    threads: list[int] = []
    original = baseline_fastapi.Baseline.sample_png
    monkeypatch.setattr(baseline_fastapi.Baseline, "sample_png",
                        lambda self, n, seed: threads.append(torch.get_num_threads()) or original(self, n, seed))
    before = torch.get_num_threads()
    try:
        with TestClient(baseline_fastapi.app) as client:
            ok = client.post("/v1/models/tiny-gan/samples", json={"n": 1, "seed": 3})
            assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
            assert ok.content == baseline_fastapi.baseline.sample_png(1, 3)  # the handler's own bytes
            assert client.post("/v1/models/other/samples", json={"n": 1}).status_code == 404
            assert client.post("/v1/models/tiny-gan/samples", json={"n": 65}).status_code == 422
        assert threads[0] == 1  # in the threadpool, as asked
    finally:
        torch.set_num_threads(before)


def test_train_step_prints_every_variant_and_the_step_phases(capsys):
    """bench.train_step on one step per run: its three variants and the six phases that
    Trainer._step_gan names for the profiler, each with a time."""
    import re

    import torch

    from bench import train_step

    threads = torch.get_num_threads()
    try:
        assert train_step.main(["--steps", "1", "--repeats", "1", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # main sets the process's threads
    out = capsys.readouterr().out
    for variant in ("shipped (batch 64)", "channels-last (batch 64)", "batch 128"):
        assert re.search(re.escape(variant) + r"\s+\d+\.\d+ steps/s", out), variant
    for phase in train_step.PHASES:
        assert re.search(rf"^  {re.escape(phase)}\s+\d+\.\d+ ms", out, re.M), phase
    assert "aten::convolution_backward" in out


def test_prior_cost_times_both_folders_in_every_cell(tiny_weights, capsys):
    from bench import prior_cost

    assert prior_cost.main(["--a", str(tiny_weights), "--b", str(tiny_weights), "--model", "tiny-vae",
                            "--generate-batches", "1,4", "--encode-batches", "2", "--seconds", "0.01",
                            "--pairs", "2", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = [line for line in lines if "b/a" in line]
    assert [c.split(":")[0].split(",")[0].strip() for c in cells] == ["generate_rows", "generate_rows", "encode_rows"]
    for cell in cells:  # "... a X ms   b Y ms   b/a R"
        words = cell.split()
        a, b, ratio = float(words[words.index("a") + 1]), float(words[words.index("b") + 1]), float(words[-1])
        assert a > 0 and b > 0 and ratio == pytest.approx(b / a, rel=0.05, abs=0.02)  # from the unrounded medians

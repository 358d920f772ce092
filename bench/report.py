"""Results -> the ratios that answer "is batching worth it, and what does the service cost?", and
the Markdown report (docs/benchmarks.md)."""

from __future__ import annotations

import math
import statistics

RATIO_LOAD = "c64"


def interpolate(rows: list[dict], key: str, batch: float) -> tuple[float, int]:
    """`key` at a (fractional) batch size: linear in log2(batch) between the measured sizes around
    it, clamped at the ends. Also returns the nearest measured size (in log2 distance)."""
    pts = sorted((r["batch"], r[key]) for r in rows)
    nearest = min(pts, key=lambda p: abs(math.log2(p[0]) - math.log2(max(batch, 1e-9))))[0]
    if batch <= pts[0][0]:
        return pts[0][1], nearest
    for (b0, v0), (b1, v1) in zip(pts, pts[1:]):
        if b0 <= batch <= b1:
            t = (math.log2(batch) - math.log2(b0)) / (math.log2(b1) - math.log2(b0))
            return v0 + t * (v1 - v0), nearest
    return pts[-1][1], nearest


def _omp_sentence(m: dict, parts: int = 1) -> str:
    """How torch's idle OpenMP threads waited: passive in every server; the limit's per
    --limit-omp-wait-policy. ``parts``: how many one-thread parts latentserve's passes (and the
    limit's) split into; with more than one, no OpenMP thread waits in a pass of 2+ rows."""
    servers = "Every server's idle OpenMP threads wait passively (`OMP_WAIT_POLICY=PASSIVE`, as `python -m app` sets it)"
    if "limit_omp_wait_policy" not in m:  # older result files name no policy for the limit or the other servers
        return "`OMP_WAIT_POLICY` set by latentserve only (`PASSIVE`); the limit and the other servers used libgomp's default."
    if m["limit_omp_wait_policy"] == "passive":
        return servers + ", and so do the in-process limit's (`--limit-omp-wait-policy passive`)."
    if parts > 1:
        return (servers + "; the in-process limit's use libgomp's default (spin, then sleep) "
                "(`--limit-omp-wait-policy default`). latentserve's passes of 2+ rows, and so the limit's, run as "
                f"{parts} parts of one thread each (`SPLIT_PASSES`): no OpenMP thread waits in them, so the policy "
                "matters only for 1-row passes and for the other servers.")
    faster = ", which makes it faster on a 2-core CPU (docs/benchmarks.md)" if m.get("device") == "cpu" else ""
    return (servers + f"; the in-process limit's use libgomp's default (spin, then sleep){faster} "
            "(`--limit-omp-wait-policy default`).")


def _cell(results: dict, server: str, load: str) -> dict | None:
    cell = results["servers"].get(server, {}).get("cells", {}).get(load)
    return cell["median"] if cell else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _versus(results: dict, other: str, load: str = RATIO_LOAD) -> dict | None:
    """latentserve against ``other`` at ``load``. ``valid`` is False when either cell had error
    answers or socket errors: a server that fails serves fewer images, and the ratio would flatter
    the other one."""
    ls, ot = _cell(results, "latentserve", load), _cell(results, other, load)
    if not ls or not ot:
        return None
    return {"load": load, "latentserve_img_per_s": ls["img_per_s"], f"{other}_img_per_s": ot["img_per_s"],
            "throughput_ratio": _div(ls["img_per_s"], ot["img_per_s"]),
            "latentserve_p99_ms": ls["p99_ms"], f"{other}_p99_ms": ot["p99_ms"],
            "p99_ratio": _div(ls["p99_ms"], ot["p99_ms"]),
            "valid": bool(ls.get("valid", True) and ot.get("valid", True))}


def ratios(results: dict) -> dict:
    out: dict = {"batching_on_vs_off": _versus(results, "latentserve-nobatch"),
                 "latentserve_vs_litserve": _versus(results, "litserve"),
                 "latentserve_vs_baseline": _versus(results, "baseline"),
                 "share_of_limit": None, "single_image_latency": None}
    limit = results.get("limit")
    ls64 = _cell(results, "latentserve", RATIO_LOAD)
    if limit and ls64 and ls64.get("mean_batch_rows"):
        rows = ls64["mean_batch_rows"]
        at_rows, nearest = interpolate(limit["batch_sizes"], "forward_png_img_per_s", rows)
        at_nearest = next(r["forward_png_img_per_s"] for r in limit["batch_sizes"] if r["batch"] == nearest)
        out["share_of_limit"] = {
            "load": RATIO_LOAD, "mean_batch_rows": rows, "img_per_s": ls64["img_per_s"],
            "limit_img_per_s_interpolated": at_rows, "pct_of_interpolated": 100 * ls64["img_per_s"] / at_rows,
            "nearest_batch": nearest, "limit_img_per_s_nearest": at_nearest,
            "pct_of_nearest": 100 * ls64["img_per_s"] / at_nearest,
            "best_limit_img_per_s": max(r["forward_png_img_per_s"] for r in limit["batch_sizes"]),
            "valid": bool(ls64.get("valid", True)),
        }
    out["share_of_limit_paired"] = results["servers"].get("latentserve", {}).get("paired_share")
    ls1, base1 = _cell(results, "latentserve", "c1"), _cell(results, "baseline", "c1")
    one = (limit or {}).get("single_image")
    if one and ls1 and base1:
        # expected = latentserve's in-process path + (the plain server's p50 - its handler); the two
        # in-process terms come from alternating windows, so their difference is taken window by window
        diffs = [a - b for a, b in zip(one.get("runs_latentserve_ms", []), one.get("runs_baseline_handler_ms", []))]
        difference = statistics.median(diffs) if diffs else one["latentserve_ms"] - one["baseline_handler_ms"]
        overhead = base1["p50_ms"] - one["baseline_handler_ms"]
        expected = base1["p50_ms"] + difference
        out["single_image_latency"] = {
            "inprocess_ms": one["latentserve_ms"], "padded_rows": one["padded_rows"],
            "baseline_handler_ms": one["baseline_handler_ms"], "inprocess_difference_ms": difference,
            "baseline_c1_p50_ms": base1["p50_ms"],
            "baseline_http_overhead_ms": overhead, "expected_ms": expected, "latentserve_c1_p50_ms": ls1["p50_ms"],
            "excess_ms": ls1["p50_ms"] - expected, "ratio": _div(ls1["p50_ms"], expected),
            "valid": bool(ls1.get("valid", True) and base1.get("valid", True)),
        }
    return out


# -- Markdown --
def _f(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{round(x):,}%"  # an int: no "-0%"


def _pct1(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.1f}%"


def _load_label(cell: dict) -> str:
    ld = cell["load"]
    return f"c={ld['concurrency']}" + (f", n={ld['n']}" if ld["n"] != 1 else "")


def servers_table(results: dict) -> str:
    lines = [("| server | load | req/s | img/s | p50 ms | p95 ms | p99 ms | mean batch rows | non-2xx | wrk CPU | server CPU "
              "| other CPU |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, srv in results["servers"].items():
        for cell in srv["cells"].values():
            m = cell["median"]
            bad = "" if m["valid"] else " **(invalid)**"
            lines.append(f"| {srv['title']} | {_load_label(cell)} | {_f(m['req_per_s'])} | {_f(m['img_per_s'])} | "
                         f"{_f(m['p50_ms'], 2)} | {_f(m['p95_ms'], 2)} | {_f(m['p99_ms'], 2)} | "
                         f"{_f(m.get('mean_batch_rows'))} | {m['non_2xx']}{bad} | {_f(m['wrk_cpu_pct'], 0)}% | "
                         f"{_f(m['server_cpu_pct'], 0)}% | {_pct(m.get('other_cpu_pct'))} |")
    return "\n".join(lines)


def _limit_table(limit: dict) -> str:
    lines = ["| batch | forward img/s | forward ms/pass | forward + PNG img/s | forward + PNG ms/pass | PNG µs/image |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in limit["batch_sizes"]:
        lines.append(f"| {r['batch']} | {_f(r['forward_img_per_s'])} | {_f(r['forward_ms_per_pass'], 3)} | "
                     f"{_f(r['forward_png_img_per_s'])} | {_f(r['forward_png_ms_per_pass'], 3)} | {_f(r['png_us_per_image'])} |")
    return "\n".join(lines)


def _mib(d: dict | None, key: str) -> str:
    return _f(d[key] / 1024) if d and key in d else "n/a"


def _memory_table(results: dict) -> str:
    lines = [("| server | processes | RSS idle, main process (MiB) | RSS after the loads, main (MiB) | PSS idle, all "
              "processes (MiB) | PSS after, all processes (MiB) | requests served | CPU while idle |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for srv in results["servers"].values():
        idle, after = srv.get("memory_idle"), srv.get("memory_after")
        if not idle or not after:
            continue
        served = sum(r["requests"] for c in srv["cells"].values() for r in c["runs"])
        served += sum(p.get("requests", 0) for p in srv.get("paired_share", {}).get("pairs", []))
        lines.append(f"| {srv['title']} | {after['processes']} | {_mib(idle, 'main_kb')} | {_mib(after, 'main_kb')} | "
                     f"{_mib(idle, 'tree_pss_kb')} | {_mib(after, 'tree_pss_kb')} | {served:,} | "
                     f"{_f(srv.get('idle_cpu_pct'), 0)}% |")
    return "\n".join(lines)


def _ratios_md(r: dict) -> list[str]:
    out = []
    names = {"batching_on_vs_off": ("Batching on / off", "latentserve-nobatch"),
             "latentserve_vs_litserve": ("latentserve / LitServe", "litserve"),
             "latentserve_vs_baseline": ("latentserve / plain FastAPI", "baseline")}
    rows = []
    for key, (title, other) in names.items():
        v = r.get(key)
        if v:
            bad = "" if v.get("valid", True) else " (invalid: a cell had error answers)"
            rows.append(f"| {title} | {_f(v['latentserve_img_per_s'])} / {_f(v[f'{other}_img_per_s'])} = "
                        f"**{_f(v['throughput_ratio'], 2)}x**{bad} | {_f(v['latentserve_p99_ms'], 2)} / "
                        f"{_f(v[f'{other}_p99_ms'], 2)} ms = **{_f(v['p99_ratio'], 2)}x**{bad} |")
        else:
            rows.append(f"| {title} | n/a | n/a |")
    out += ["At concurrency 64, one image per request. Throughput ratio > 1: latentserve serves more; "
            "p99 ratio < 1: latentserve answers faster.", "",
            "| comparison | img/s ratio | p99 ratio |", "|---|---:|---:|", *rows, ""]
    s = r.get("share_of_limit")
    if s:
        out += [f"**Share of the in-process limit.** At c=64 latentserve formed forward passes of "
                f"{_f(s['mean_batch_rows'])} rows on average (padded to the next power of two). The in-process "
                f"forward + PNG rate at that batch size (interpolated in log2 of the batch size) is "
                f"{_f(s['limit_img_per_s_interpolated'])} img/s; latentserve's {_f(s['img_per_s'])} img/s is "
                f"**{_f(s['pct_of_interpolated'])}%** of it ({_f(s['pct_of_nearest'])}% of the nearest measured size, "
                f"{s['nearest_batch']}: {_f(s['limit_img_per_s_nearest'])} img/s). The best in-process rate at any "
                f"batch size is {_f(s['best_limit_img_per_s'])} img/s."
                + ("" if s.get("valid", True) else " **Invalid: latentserve's c=64 cell had error answers.**"), ""]
    else:
        out += ["**Share of the in-process limit:** n/a (needs the limit and latentserve at c=64).", ""]
    p = r.get("share_of_limit_paired")
    if p:
        rows = "\n".join(f"| {i + 1} | {_f(x['limit_img_per_s'])} | {_f(x['server_img_per_s'])} | {_f(x['pct'])}%"
                         f"{'' if x.get('valid', True) else ' (error answers: not counted)'} |"
                         for i, x in enumerate(p["pairs"]))
        padded = p.get("padded_to", p["batch"])
        rows_text = f"{p['batch']} rows" + (f" padded to {padded}, as the server pads them" if padded != p["batch"] else "")
        counted = "" if p.get("valid_pairs", len(p["pairs"])) == len(p["pairs"]) else \
            f" ({p['valid_pairs']} of {len(p['pairs'])} pairs had no error answer and count)"
        out += [f"**Share of the limit, side by side.** The limit above was measured minutes before the servers, "
                f"and this machine's speed drifts by ±20% over minutes. So the share is also measured in "
                f"{len(p['pairs'])} alternating pairs, after the latentserve cells: one in-process window of forward + "
                f"PNG at {rows_text} (the {_f(p['mean_batch_rows'])} rows per pass latentserve formed at c=64), "
                f"then one c=64 run of latentserve, {_f(p['seconds'], 0)} s each. Median share{counted}: "
                f"**{_pct1(p['median_pct'])}** (median limit {_f(p['median_limit_img_per_s'])} img/s, median "
                f"latentserve {_f(p['median_server_img_per_s'])} img/s).", "",
                "| pair | limit img/s | latentserve img/s | share |", "|---:|---:|---:|---:|", rows, ""]
    c = r.get("single_image_latency")
    if c:
        bad = "" if c.get("valid", True) else " **(invalid: a c=1 cell had error answers)**"
        out += ["**One image, no concurrency (c=1).** The plain FastAPI server's HTTP overhead is its c=1 p50 minus "
                "its handler's own work for one image, timed in process (seeded latent, eager pass, PNG). "
                f"latentserve runs a lone image in a pass padded to {c['padded_rows']} row(s); its expected p50 is "
                "that pass + PNG, timed in process, plus the same HTTP overhead. The two in-process times are "
                "measured in alternating windows, and their difference is the median of the windows' own "
                "differences, so the expectation is the plain server's p50 plus that difference. The rest is what "
                "latentserve adds: drawing the latent, the batcher, the event loop's hops and the middleware. The "
                "two servers' c=1 cells were measured minutes apart." + bad, "",
                "| quantity | ms |", "|---|---:|",
                (f"| in-process, latentserve's path: 1 image in a pass of {c['padded_rows']} row(s), forward + PNG "
                 f"(median of the windows) | {_f(c['inprocess_ms'], 3)} |"),
                (f"| in-process, the plain server's handler for 1 image (median of the windows) | "
                 f"{_f(c['baseline_handler_ms'], 3)} |"),
                (f"| latentserve's path - the handler (median of the windows' differences) | "
                 f"{_f(c.get('inprocess_difference_ms', c['inprocess_ms'] - c['baseline_handler_ms']), 3)} |"),
                f"| plain FastAPI c=1 p50 | {_f(c['baseline_c1_p50_ms'], 3)} |",
                f"| HTTP overhead of the plain server (its p50 - its handler) | {_f(c['baseline_http_overhead_ms'], 3)} |",
                f"| expected latentserve p50 (plain FastAPI p50 + the difference) | {_f(c['expected_ms'], 3)} |",
                f"| **latentserve c=1 p50** | **{_f(c['latentserve_c1_p50_ms'], 3)}** |",
                f"| excess over expected | {_f(c['excess_ms'], 3)} ({_f(c['ratio'], 2)}x expected) |", ""]
    else:
        out += ["**One image at c=1:** n/a (needs the limit, latentserve and the plain FastAPI server at c=1).", ""]
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    cores = f"{m['cpu_count']} logical CPUs" + (f" ({m['cpus_allowed']} allowed)" if m["cpus_allowed"] != m["cpu_count"] else "")
    device = m["device"] + (f" ({m['cuda_device']})" if m.get("cuda_device") else "")
    pk = m["packages"]
    out = ["# Benchmarks", ""]
    busy = float(m["loadavg_start"][0]) >= 0.5 * m["cpus_allowed"]
    if busy:
        out += [f"> **The machine was busy** (load average {m['loadavg_start'][0]} at the start on "
                f"{m['cpus_allowed']} CPUs): other work shared the cores, so these numbers understate every "
                "server and are noisy. With several torch threads on contended cores a forward pass can take "
                "many times longer (a parallel region waits for its slowest thread).", ""]
    if m["quick"]:
        out += ["> **Quick smoke run** (`--quick`): one short run per cell. These numbers only show that the "
                "harness works; run `python -m bench.run` for real ones.", ""]
    out += [
        f"latentserve against its in-process limit, against itself with batching off, against a plain FastAPI "
        f"server and against LitServe, on the same weights (`{m['model']}`), measured in one run by "
        f"`bench/run.py`. Every server runs alone, as one worker (LitServe: one inference worker and one API "
        f"server process), with the same number of torch threads ({m['torch_threads']})"
        f"{' and the same NHWC (channels-last) convolution weights on a CPU' if m.get('channels_last') else ''}, "
        f"on 127.0.0.1. {_omp_sentence(m, (results.get('limit') or {}).get('pass_parts', 1))}", "",
        "## Machine and run", "",
        f"- **Date:** {m['date']}",
        f"- **Command:** `{m['command']}`" + (" (run under `nice -n 19`)" if m.get("niceness") else ""),
        f"- **CPU:** {m['cpu_model']}, {cores}, {m['memory_gib']} GiB RAM; device: {device}",
        f"- **Load average at start / end:** {' '.join(m['loadavg_start'])} / {' '.join(m.get('loadavg_end', []))}"
        " (anything else running on the machine skews every number)",
        f"- **Software:** Python {m['python']}, torch {m['torch']}, FastAPI {pk.get('fastapi')}, uvicorn "
        f"{pk.get('uvicorn')} (uvloop {pk.get('uvloop') or 'absent'}, httptools {pk.get('httptools') or 'absent'}), "
        f"LitServe {pk.get('litserve') or 'absent'}, Pillow {pk.get('pillow')}; {m['wrk']}",
        f"- **Code:** commit {m['git_commit']}{' with local changes' if m['git_dirty'] else ''}; weights "
        f"`{m['weights_dir']}`",
        f"- **Method:** wrk, closed loop, {m['wrk_threads']} thread(s), a new seed per request "
        f"(`bench/samples.lua`); per cell {m['warmup_s']:g} s of uncounted warm-up, then the median of "
        f"{m['runs']} run(s) of {m['duration_s']:g} s. Latency percentiles are wrk's. In-process limit: median "
        f"of {m['runs']} window(s) of {m['limit_seconds']:g} s per batch size.", "",
    ]
    if results.get("limit"):
        out += ["## The limit: in process, no HTTP", "",
                "`Registry.from_settings` -> `ServedModel.generate_rows` (the server's forward path: the same "
                "TorchScript graph when the server's warm-up keeps one, every size a bucket; on a CPU its passes of 2+ rows "
                "split in parts of one thread each, run at once, as the server's are: SPLIT_PASSES) and "
                "`app.engine.imaging.png_bytes` per image, one thread calling, one after the other; no latent sampling, no "
                "HTTP, no queue. In the server, the event loop encodes a single image's PNG (grids go to the PNG "
                "threads) while the next pass computes.", "",
                _limit_table(results["limit"]), ""]
    out += ["## Servers", "",
            "Single-image requests `POST /v1/models/{model}/samples` with `{\"n\": 1, \"seed\": s}` at "
            "concurrency (c) 1, 8, 64 and 256, and 16-image requests (a 16-image grid PNG) at c=16. "
            "img/s counts images in 200 answers. *Mean batch rows*: rows per forward pass actually formed "
            "(latentserve: `latentserve_batch_rows` sum/count deltas from `/metrics`; LitServe: counted in "
            "`predict`; plain FastAPI: n, one pass per request). *non-2xx*: answers with status >= 400 summed "
            "over the runs (wrk's count; none of these routes redirect); a cell is valid only at 0. *wrk CPU* / "
            "*server CPU*: CPU time over wall time, in % of one core, of wrk and of the server's processes. "
            "*other CPU*: the rest of the machine's busy time over the same run (from `/proc/stat`; this harness "
            "included): what else took the cores.", "",
            servers_table(results), ""]
    notes = [f"- **{s['title']}**: {s['notes']}" + (f"; settings {', '.join(f'`{k}={v}`' for k, v in s['settings'].items())}"
             if s["settings"] else "") for s in results["servers"].values()]
    out += notes + [""]
    failed = [(s["title"], s["error"]) for s in results["servers"].values() if s.get("error")]
    for title, error in failed:
        out += [f"**{title} failed:**", "", "```", error.strip()[-1500:], "```", ""]
    out += ["## Memory", "", "Resident set (VmRSS) of the main process, and the proportional set size (PSS) of "
            "all the server's processes (shared pages, such as torch's libraries in LitServe's several processes, "
            "counted once), with only the benchmarked model loaded: idle after start-up and warm-up, before any "
            "load, and after all loads; the requests served in the counted runs (warm-ups not included); and the "
            "CPU the server's processes use while nobody sends anything (% of one core, over 1 s). Growth over a "
            "100,000-request run is measured by `python -m bench.reliability soak` (docs/reliability.md).", "",
            _memory_table(results), ""]
    out += ["## Ratios", "", *_ratios_md(results["ratios"])]
    out += ["Raw numbers, every run of every cell, and the machine details: the JSON file written next to this "
            "report by the same command (default `bench/results.json`).", ""]
    return "\n".join(out)

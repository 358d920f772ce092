"""Two latentserve servers side by side: the same load in alternating rounds, so that both see the
same minutes of a machine whose speed drifts by +-20% (docs/benchmarks.md). The "side by side"
comparisons of two commits or two settings in docs/benchmarks.md were measured this way.

Each side is a git revision of this repository, checked out in a temporary worktree, or the
working tree (WORKTREE), plus its own environment (KEY=VALUE, repeatable). Both servers start
with the benchmark's latentserve settings (bench.servers.latentserve) and stay up; each gets a
few seconds of uncounted load, then the rounds alternate with wrk: A then B in odd rounds, B then
A in even ones, so that a steady drift of the machine favours neither side.

    python -m bench.ab --a HEAD~1                                    # the last commit's change
    python -m bench.ab --a-env OMP_WAIT_POLICY=                      # libgomp's default against PASSIVE
    python -m bench.ab --b-env LATENTSERVE_TORCH_THREADS=1 --rounds 5 --concurrency 8

(An empty OMP_WAIT_POLICY gets past app/__main__.py's default of PASSIVE; libgomp then logs
"Invalid value for environment variable OMP_WAIT_POLICY" and uses its default.)

Compares successful answers per second (answers with status >= 400 or socket errors make the
exit status 1 and are flagged). Prints every round, the medians, B / A and how many rounds B
won; with --out-json also writes them. Ctrl-C stops early and summarises the complete rounds.
Needs wrk (apt-get install wrk) and git."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from bench import loadgen, servers
from bench.loadgen import Load

REPO = servers.REPO
WORKTREE = "WORKTREE"


def env_pair(text: str) -> tuple[str, str]:
    """KEY=VALUE (the value may be empty: an empty OMP_WAIT_POLICY is libgomp's default)."""
    key, sep, value = text.partition("=")
    if not sep or not key or not key.replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default=WORKTREE, help="revision of side A (default: the working tree)")
    p.add_argument("--b", default=WORKTREE, help="revision of side B (default: the working tree)")
    p.add_argument("--a-env", type=env_pair, action="append", default=[], metavar="KEY=VALUE",
                   help="environment of side A's server (repeatable)")
    p.add_argument("--b-env", type=env_pair, action="append", default=[], metavar="KEY=VALUE",
                   help="environment of side B's server (repeatable)")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per side (default 3)")
    p.add_argument("--duration", type=int, default=8, help="seconds per round (default 8)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of uncounted load per side first (default 3)")
    p.add_argument("--concurrency", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--n", type=int, default=1, help="images per request (default 1)")
    p.add_argument("--model", default="fashion-gan")
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights", help="the same weights for both sides")
    p.add_argument("--device", default="cpu")
    p.add_argument("--torch-threads", type=int, default=0, help="intra-op threads (default: torch's default here)")
    p.add_argument("--out-json", type=Path)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        p.error("--rounds and --duration must be >= 1, --warmup >= 0")
    return args


@contextlib.contextmanager
def source_tree(revision: str) -> Iterator[Path]:
    """The working tree, or ``revision`` checked out in a temporary git worktree (removed after)."""
    if revision == WORKTREE:
        yield REPO
        return
    with tempfile.TemporaryDirectory(prefix="latentserve-ab-") as tmp:
        tree = Path(tmp) / "tree"
        added = subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=REPO, check=False,
                               capture_output=True, text=True)
        if added.returncode != 0:
            raise SystemExit(f"cannot check out {revision!r}: {added.stderr.strip()}")
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False,
                           capture_output=True)


def summary(a: list[float], b: list[float]) -> dict:
    """Medians of each side's rounds, B / A (the ratio of the medians; None when A served
    nothing), the median of the rounds' own B / A (each round's two runs are minutes apart at
    most), and the rounds B served more in (same round index). Only rounds both sides completed
    count."""
    a, b = a[:len(b)], b[:len(a)]
    if not a:
        return {"median_a": None, "median_b": None, "ratio_b_a": None, "median_round_ratio": None, "b_won": 0, "rounds": 0}
    ma, mb = statistics.median(a), statistics.median(b)
    per_round = [y / x for x, y in zip(a, b) if x]
    return {"median_a": ma, "median_b": mb, "ratio_b_a": mb / ma if ma else None,
            "median_round_ratio": statistics.median(per_round) if per_round else None,
            "b_won": sum(y > x for x, y in zip(a, b)), "rounds": len(a)}


def _spec(args: argparse.Namespace, tree: Path, extra: list[tuple[str, str]], port: int, name: str) -> servers.ServerSpec:
    common = servers.Common(weights_dir=args.weights_dir.resolve(), model=args.model, device=args.device,
                            torch_threads=args.torch_threads)
    spec = servers.latentserve(common, port, batching=True)
    env = {**spec.env, "PYTHONPATH": servers.child_pythonpath(tree), **dict(extra)}
    return replace(spec, name=name, title=name, env=env, cwd=tree)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.torch_threads:
        import torch

        args.torch_threads = torch.get_num_threads()
    wrk = loadgen.find_wrk()
    load = Load("ab", args.concurrency, args.n)
    rounds: dict[str, list[dict]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="latentserve-ab-logs-") as logs, \
            source_tree(args.a) as tree_a, source_tree(args.b) as tree_b:
        sides: dict[str, servers.Server] = {}
        try:
            ports: list[int] = []
            for side, tree, extra in (("A", tree_a, args.a_env), ("B", tree_b, args.b_env)):
                port = servers.free_port()
                while port in ports:  # a port is free until a server binds it: B must not get A's
                    port = servers.free_port()
                ports.append(port)
                sides[side] = servers.Server(_spec(args, tree, extra, port, f"side-{side}"), port, Path(logs))
                sides[side].start()
            for server in sides.values():
                server.wait_ready()
                server.measure_idle_cpu()
                if args.warmup:
                    loadgen.run_wrk(wrk, server.url, load, args.warmup, seed_base=0)
            for i in range(args.rounds):
                for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    server = sides[side]
                    for other in sides.values():  # what the last run left (dropped connections' passes) ends first
                        other.wait_idle()
                    c0, t0 = server.cpu_seconds(), time.perf_counter()
                    r = loadgen.run_wrk(wrk, server.url, load, args.duration, seed_base=(i + 1) * 1_000_000)
                    r["ok_per_s"] = r["img_per_s"] / args.n  # answers with status < 400
                    r["server_cpu_pct"] = 100.0 * (server.cpu_seconds() - c0) / (time.perf_counter() - t0)
                    rounds[side].append(r)
                    print(f"round {i + 1} {side}: {r['ok_per_s']:8.1f} req/s  p99 {r['p99_ms']:7.2f} ms  "
                          f"non-2xx {r['non_2xx']}  socket errors {r['socket_errors']}  "
                          f"server CPU {r['server_cpu_pct']:.0f}%", flush=True)
        except KeyboardInterrupt:
            print("interrupted: the rounds both sides completed follow", flush=True)
        finally:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave a server up
            try:
                for server in sides.values():
                    server.stop(timeout_s=10.0)
            finally:
                signal.signal(signal.SIGINT, previous)
    result = summary([r["ok_per_s"] for r in rounds["A"]], [r["ok_per_s"] for r in rounds["B"]])
    if args.out_json:
        args.out_json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "rounds": rounds, "summary": result}, indent=2) + "\n")
    errors = {side: sum(r["non_2xx"] + r["socket_errors"] for r in rs) for side, rs in rounds.items()}
    for side, revision, extra in (("A", args.a, args.a_env), ("B", args.b, args.b_env)):
        what = " ".join([revision, *(f"{k}={v}" for k, v in extra)])
        rates = ", ".join(f"{r['ok_per_s']:.1f}" for r in rounds[side][:result["rounds"]])
        median = result["median_" + side.lower()]
        print(f"{side} ({what}): {rates or '-'} req/s, median {'n/a' if median is None else f'{median:.1f}'}"
              + (f"; {errors[side]} errors (non-2xx or socket): not comparable" if errors[side] else ""))
    ratio = result["ratio_b_a"]
    per_round = result["median_round_ratio"]
    print(f"B / A = {'n/a' if ratio is None else f'{ratio:.3f}'} (median of the rounds' own B / A: "
          f"{'n/a' if per_round is None else f'{per_round:.3f}'}); B served more in {result['b_won']} of "
          f"{result['rounds']} rounds")
    return 1 if any(errors.values()) or result["rounds"] < args.rounds else 0

if __name__ == "__main__":
    raise SystemExit(main())

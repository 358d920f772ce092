"""Two routes of one latentserve server side by side: the same load in alternating rounds, so both
see the same minutes of a machine whose speed drifts. For the routes that promise the speed of
``samples`` (an edit is the same forward pass as a sample):

    python -m bench.routes                                   # /edit against /samples, c=64
    python -m bench.routes --b-beside-projections            # /samples alone, and beside a projection
    python -m bench.routes --b-path edit --b-body '{"seed":%d,"moves":[{"direction":0,"amount":1.5}]}'
    python -m bench.routes --b-path /v1/images/generations \
        --b-body '{"prompt":"a sneaker, take %d","model":"fashion-gan","size":"28x28","response_format":"b64_json"}'

Each body is a JSON template with one %d, the request's seed (a different seed per request, bench/samples.lua). Prints every round, the medians, B / A, and how many rounds B won. Needs wrk."""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench import loadgen, servers
from bench.ab import summary
from bench.loadgen import Load


class ProjectionLoop:
    """One client that keeps a projection running (200 steps from 4 seeds) until stopped."""

    def __init__(self, base: str, model: str):
        _, _, self.png = servers.http("GET", f"{base}/v1/models/{model}/samples.png?seed=77&label=4")
        self.url = f"{base}/v1/models/{model}/project?label=4&steps=200&starts=4"
        self.done, self.running = 0, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            req = urllib.request.Request(self.url, data=self.png, method="POST", headers={"Content-Type": "image/png"})
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
            self.done += 1

    def stop(self) -> int:
        self.running = False
        self.thread.join(60)
        return self.done


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.routes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-gan")
    p.add_argument("--a-path", default="samples")
    p.add_argument("--a-body", default='{"seed":%d}')
    p.add_argument("--b-path", default="edit")
    p.add_argument("--b-body", default='{"seed":%d,"moves":[{"direction":0,"amount":1.5},{"direction":2,"amount":-1}]}')
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--weights-dir", type=Path, default=servers.REPO / "weights")
    p.add_argument("--b-beside-projections", action="store_true",
                   help="B = A's route while one client keeps a GAN projection running (/project, back to back)")
    p.add_argument("--out-json", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = loadgen.find_wrk()
    load = Load("routes", args.concurrency)
    port = servers.free_port()
    spec = servers.latentserve_spec(port, args.weights_dir, {"MODELS": args.model, "MAX_QUEUE_WAIT_S": "0",
                                                             "MAX_QUEUE_ROWS": "100000"})
    sides = {"A": (args.a_path, args.a_body), "B": (args.b_path, args.b_body)}
    if args.b_beside_projections:
        sides["B"] = sides["A"]
    rounds: dict[str, list[dict]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="latentserve-routes-") as logs:
        server = servers.Server(spec, port, Path(logs))
        server.start()
        try:
            server.wait_ready()
            url = f"http://127.0.0.1:{port}/v1/models/{args.model}/"
            def target(path: str) -> str:  # a path under the model, or an absolute one (/v1/images/...)
                return f"http://127.0.0.1:{port}{path}" if path.startswith("/") else url + path

            for path, body in sides.values():
                loadgen.run_wrk(wrk, target(path), load, args.warmup, seed_base=0, body_template=body)
            for i in range(args.rounds):
                for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    path, body = sides[side]
                    server.wait_idle()
                    projecting = ProjectionLoop(f"http://127.0.0.1:{port}", args.model) if (
                        side == "B" and args.b_beside_projections) else None
                    r = loadgen.run_wrk(wrk, target(path), load, args.duration, seed_base=(i + 1) * 1_000_000,
                                        body_template=body)
                    if projecting is not None:
                        r["projections"] = projecting.stop()
                    rounds[side].append(r)
                    print(f"round {i + 1} {side} /{path}: {r['img_per_s']:8.1f} img/s  p50 {r['p50_ms']:6.2f} ms  "
                          f"p99 {r['p99_ms']:7.2f} ms  non-2xx {r['non_2xx']}  socket errors {r['socket_errors']}"
                          + (f"  projections done {r['projections']}" if "projections" in r else ""),
                          flush=True)
                    time.sleep(0.2)
        finally:
            server.stop(timeout_s=10.0)
    result = summary([r["img_per_s"] for r in rounds["A"]], [r["img_per_s"] for r in rounds["B"]])
    errors = sum(r["non_2xx"] + r["socket_errors"] for rs in rounds.values() for r in rs)
    b_label = f"/{sides['B'][0]}" + (" beside a projection" if args.b_beside_projections else "")
    print(f"A /{args.a_path}: median {result['median_a']:.1f} img/s; B {b_label}: median {result['median_b']:.1f} img/s")
    print(f"B / A = {result['ratio_b_a']:.3f} (median of the rounds' own B / A: {result['median_round_ratio']:.3f}); "
          f"B served more in {result['b_won']} of {result['rounds']} rounds; errors: {errors}")
    if args.out_json:
        args.out_json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "rounds": rounds, "summary": result}, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

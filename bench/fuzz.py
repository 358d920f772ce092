"""Fuzz the API from its own OpenAPI document with schemathesis: every operation, schema-valid
(positive) and schema-violating (negative) cases, each response checked by schemathesis's
default checks (no 5xx; status code, content type, headers and body as documented; invalid data
rejected), and the service still ready afterwards.

    python -m bench.fuzz --examples 100     # the long run: a real server, the shipped models

The CI test (tests/app/edge/test_fuzz.py) runs ``fuzz_schema`` in process on tiny models with a fixed
seed. One check is left out: *positive data acceptance*, because some rules depend on the model
named in the path (a latent's length is that model's latent_dim, label names are its classes,
only VAEs encode) and one shared schema cannot say them; such requests get a documented 4xx.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import seed as hypothesis_seed
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

EXCLUDED_CHECKS = [positive_data_acceptance]


@dataclass
class FuzzStats:
    cases: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    per_operation: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    not_generated: list[str] = field(default_factory=list)  # e.g. negative cases of an operation without inputs

    def as_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "per_operation": self.per_operation, "failures": self.failures, "not_generated": self.not_generated}


def fuzz_schema(schema: Any, examples: int, seed: int = 0, **call_kwargs: Any) -> FuzzStats:
    """Run ``examples`` positive and ``examples`` negative cases (at most; hypothesis stops early
    where an operation has fewer distinct inputs) against every operation of ``schema``."""
    stats = FuzzStats()
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{op.label} [{mode.value}]"
            count = 0

            @hypothesis_seed(seed)
            @hypothesis_settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                                 suppress_health_check=list(HealthCheck), print_blob=False)
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal count
                count += 1
                response = case.call_and_validate(excluded_checks=EXCLUDED_CHECKS, **call_kwargs)
                stats.statuses[response.status_code] += 1

            try:
                run()
            except Unsatisfiable:
                stats.not_generated.append(label)
            except Exception as e:  # a schemathesis failure group: the report says what and how to reproduce
                stats.failures.append(f"{label}: {e}")
            stats.per_operation[label] = count
            stats.cases += count
    return stats


def main(argv: list[str] | None = None) -> int:
    from bench.servers import REPO, Server, free_port, http, latentserve_spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100, help="per operation and mode (positive, negative)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=Path, default=REPO / "weights")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "fuzz.json")
    args = ap.parse_args(argv)
    port = free_port()
    server = Server(latentserve_spec(port, args.weights, {"MODELS": "fashion-gan,fashion-vae"}), port, Path("/tmp"))
    server.start()
    try:
        server.wait_ready()
        schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
        t0 = time.monotonic()
        stats = fuzz_schema(schema, args.examples, args.seed, base_url=server.base, timeout=60)
        elapsed = time.monotonic() - t0
        ready, _, _ = http("GET", server.base + "/readyz")
        alive = server.proc.poll() is None
    finally:
        server.stop()
    report = {"command": "python -m bench.fuzz " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(elapsed, 1),
              "ready_after": ready, "alive_after": alive, "exit_status": server.proc.returncode, **stats.as_dict()}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "per_operation"}, indent=2))
    ok = not stats.failures and ready == 200 and alive and not any(int(s) >= 500 for s in stats.statuses)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The shipped nginx config (deploy/nginx/) for real: nginx in front of two replicas, the short
version of ``python -m bench.gateway`` (prefix, request ids, the PNG cache and its key isolation,
a 429 passed through, rolling restarts and a SIGKILL under load with no client-visible error).
Needs nginx and wrk; .ci/run installs them."""

from __future__ import annotations

import json
import os
import shutil

from bench import gateway


def test_nginx_in_front_of_two_replicas_passes_every_check(tmp_path, capsys):
    assert shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"), "nginx is not installed (.ci/run installs it)"
    out = tmp_path / "gateway.json"
    code = gateway.main(["--short", "--out-json", str(out)])
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert code == 0, printed
    assert len(results["checks"]) == 13 and all(c["ok"] for c in results["checks"].values()), printed
    restarts = results["checks"]["rolling restarts and a SIGKILL under load"]["detail"]
    assert restarts["requests"] > 100 and restarts["non_2xx"] == 0 and restarts["socket_errors"] == 0

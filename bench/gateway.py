"""nginx in front of two latentserve replicas, with the shipped config (deploy/nginx/): the
prefix, request ids, rolling restarts and a SIGKILL under load, the PNG cache and its key
isolation, and a 429 passed through. Prints what it measured; exit 1 on any failed check.

    python -m bench.gateway                  # the full run (load for 30 s around each restart)
    python -m bench.gateway --short          # the CI version (tests/test_gateway_nginx.py)
    python -m bench.gateway --max-fails 1    # the upstream as nginx's defaults would mark it

Needs nginx (apt-get install nginx-light) and wrk (apt-get install wrk)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import loadgen, servers
from bench.loadgen import Load

CONF = servers.REPO / "deploy" / "nginx" / "latentserve.conf"
PROXY_CONF = servers.REPO / "deploy" / "nginx" / "latentserve-proxy.conf"
KEYS = ("key-a-0123456789", "key-b-0123456789")
PREFIX = "/latentserve"


def request(method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None,
            timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def nginx_conf(folder: Path, port: int, replicas: list[int], max_fails: int) -> Path:
    """The shipped config with this run's ports and folders, inside a minimal main config."""
    site = CONF.read_text()
    servers_block = "\n".join(f"    server 127.0.0.1:{p} max_fails={max_fails}{' fail_timeout=2s' if max_fails else ''};"
                              for p in replicas)
    site = re.sub(r"(?m)^    server 127\.0\.0\.1:800\d max_fails=0;\n", "", site)
    site = site.replace("    keepalive 32;", servers_block + "\n    keepalive 32;")
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    site = site.replace("/var/cache/nginx/latentserve", str(folder / "cache"))
    site = site.replace("/etc/nginx/latentserve-proxy.conf", str(folder / "latentserve-proxy.conf"))
    (folder / "latentserve-proxy.conf").write_text(PROXY_CONF.read_text())
    (folder / "latentserve.conf").write_text(site)
    main = folder / "nginx.conf"
    main.write_text(f"""user root;
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi; uwsgi_temp_path {folder}/uwsgi; scgi_temp_path {folder}/scgi;
    include {folder}/latentserve.conf;
}}
""")
    return main


class Replicas:
    """Two `python -m app` processes on fixed ports, restarted in place."""

    def __init__(self, ports: list[int], logs: Path, settings: dict[str, str]):
        self.specs = [servers.latentserve_spec(p, servers.REPO / "weights", settings, name=f"replica-{i}")
                      for i, p in enumerate(ports)]
        self.ports, self.logs = ports, logs
        self.running: list[servers.Server | None] = [None, None]

    def start(self, i: int) -> float:
        server = servers.Server(self.specs[i], self.ports[i], self.logs)
        server.start()
        self.running[i] = server
        t0 = time.monotonic()
        while True:
            try:
                if request("GET", f"http://127.0.0.1:{self.ports[i]}/readyz", timeout=2)[0] == 200:
                    return time.monotonic() - t0
            except OSError:  # not listening yet
                pass
            if server.proc.poll() is not None:
                raise RuntimeError(f"replica {i} exited:\n{server.log_tail()}")
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"replica {i} not ready:\n{server.log_tail()}")
            time.sleep(0.05)

    def stop(self, i: int, kill: bool = False) -> None:
        server = self.running[i]
        if server is None:
            return
        if kill:
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
        server.stop(timeout_s=40)
        self.running[i] = None

    def computed_rows(self) -> float:
        total = 0.0
        for port in self.ports:
            _, _, body = request("GET", f"http://127.0.0.1:{port}/metrics")
            for line in body.decode().splitlines():
                if line.startswith("latentserve_rows_total{") and 'outcome="computed"' in line:
                    total += float(line.rsplit(" ", 1)[1])
        return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="the CI version: short load, one restart each")
    p.add_argument("--max-fails", type=int, default=0, help="the upstream's max_fails (shipped: 0)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--replica-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a LATENTSERVE_ setting of both replicas, e.g. OPEN_PORT_WHEN_READY=true (repeatable)")
    p.add_argument("--out-json", type=Path)
    args = p.parse_args(argv)
    nginx, wrk = shutil.which("nginx") or "/usr/sbin/nginx", loadgen.find_wrk()
    results: dict = {"max_fails": args.max_fails, "checks": {}}
    failures: list[str] = []

    def check(name: str, ok: bool, detail: object) -> None:
        results["checks"][name] = {"ok": ok, "detail": detail}
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            failures.append(name)

    settings = {"MODELS": "fashion-gan", "API_KEYS": ",".join(KEYS), "PROJECTION_TIMEOUT_S": "1",
                "LOG_LEVEL": "warning", **dict(kv.split("=", 1) for kv in args.replica_setting)}
    results["replica_settings"] = args.replica_setting
    with tempfile.TemporaryDirectory(prefix="latentserve-gateway-") as tmp:
        folder = Path(tmp)
        ports = [servers.free_port(), servers.free_port()]
        while ports[1] == ports[0]:
            ports[1] = servers.free_port()
        gw_port = servers.free_port()
        replicas = Replicas(ports, folder, settings)
        proc = None
        try:
            for i in (0, 1):
                replicas.start(i)
            conf = nginx_conf(folder, gw_port, ports, args.max_fails)
            subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(folder)], check=True, capture_output=True)
            proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(folder)], stderr=subprocess.DEVNULL)
            base = f"http://127.0.0.1:{gw_port}{PREFIX}"
            key = {"X-API-Key": KEYS[0]}
            deadline = time.monotonic() + 10
            while True:
                try:
                    request("GET", base + "/healthz", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

            # the prefix: the docs page and the playground point under it; a PNG comes back
            status, _, body = request("GET", base + "/docs", key)
            check("prefix: /docs", status == 200 and f"{PREFIX}/openapi.json".encode() in body, status)
            status, headers, body = request("GET", base + "/")
            check("prefix: the playground", status == 200 and b"playground/app.js" in body, status)
            status, headers, body = request("GET", base + "/v1/models/fashion-gan/samples.png?seed=1", key)
            check("prefix: a PNG", status == 200 and body[:4] == b"\x89PNG", status)

            # request ids: the client's kept, else nginx's $request_id
            _, headers, _ = request("GET", base + "/v1/models", {**key, "X-Request-ID": "client-id-12345678"})
            check("request id from the client", headers.get("x-request-id") == "client-id-12345678", headers.get("x-request-id"))
            _, headers, _ = request("GET", base + "/v1/models", key)
            check("request id from nginx", bool(re.fullmatch(r"[0-9a-f]{32}", headers.get("x-request-id", ""))),
                  headers.get("x-request-id"))

            # the cache: a hit costs no forward pass; a key's entry is not served to another request
            url = base + "/v1/models/fashion-gan/samples.png?seed=4242&scale=2"
            rows0 = replicas.computed_rows()
            first = request("GET", url, key)
            rows1 = replicas.computed_rows()
            hits = [request("GET", url, key) for _ in range(20)]
            rows2 = replicas.computed_rows()
            check("cache: miss then hits", first[1].get("x-cache-status") == "MISS"
                  and all(h[1].get("x-cache-status") == "HIT" and h[2] == first[2] for h in hits),
                  [first[1].get("x-cache-status"), hits[-1][1].get("x-cache-status")])
            check("cache: a hit runs no forward pass", rows1 - rows0 == 1 and rows2 == rows1,
                  {"rows for the miss": rows1 - rows0, "rows for 20 hits": rows2 - rows1})
            anonymous = request("GET", url)
            check("cache: no key gets the service's 401, not the cached PNG", anonymous[0] == 401
                  and anonymous[1].get("x-cache-status") != "HIT", [anonymous[0], anonymous[1].get("x-cache-status")])
            other = request("GET", url, {"X-API-Key": KEYS[1]})
            check("cache: another key has its own entry", other[0] == 200 and other[1].get("x-cache-status") == "MISS",
                  other[1].get("x-cache-status"))
            check("cache: POSTs are not cached", "x-cache-status" not in request(
                "POST", base + "/v1/models/fashion-gan/samples", {**key, "Content-Type": "application/json"},
                b'{"seed": 1}')[1], "no X-Cache-Status")

            # requests per second and p99 for one repeated seed, through the cache and past it
            load = Load("cache", 16)
            hdr = {"X-API-Key": KEYS[0]}
            secs = 3 if args.short else 8
            cached = loadgen.run_get(wrk, url, load, secs, headers=hdr)
            # without the cache: the same URL straight to a replica (what every request costs uncached)
            uncached = loadgen.run_get(wrk, f"http://127.0.0.1:{ports[0]}/v1/models/fashion-gan/samples.png?seed=4242&scale=2",
                                       load, secs, headers=hdr)
            check("cache: repeated seed, c=16", cached["non_2xx"] == 0 and uncached["non_2xx"] == 0,
                  {"through nginx's cache: req/s": round(cached["req_per_s"]), "p99 ms": round(cached["p99_ms"], 2),
                   "straight to a replica: req/s": round(uncached["req_per_s"]), "p99 ms ": round(uncached["p99_ms"], 2)})

            # a 429 from a replica reaches the client with its Retry-After (projection slots are full)
            png = first[2]
            answers: list[tuple[int, dict[str, str]]] = []

            def project() -> None:
                s, h, _ = request("POST", base + "/v1/models/fashion-gan/project?label=0&steps=1000&starts=16",
                                  {**key, "Content-Type": "image/png"}, png, timeout=60)
                answers.append((s, h))

            threads = [threading.Thread(target=project) for _ in range(20)]  # 10 a replica: 1 runs, 4 wait, 5 refused
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            too_many = [h for s, h in answers if s == 429]
            check("429 passed through with Retry-After", bool(too_many) and all(h.get("retry-after") for h in too_many),
                  sorted(s for s, _ in answers))

            # rolling restarts and a SIGKILL under load: no client-visible error
            events: list[str] = []
            load_s = 12 if args.short else 30

            def disrupt() -> None:
                time.sleep(1.0)
                for i in (0, 1):
                    replicas.stop(i)
                    events.append(f"replica {i} restarted, ready in {replicas.start(i):.1f} s")
                replicas.stop(0, kill=True)
                events.append(f"replica 0 killed, back in {replicas.start(0):.1f} s")

            disruptor = threading.Thread(target=disrupt)
            disruptor.start()
            body_load = Load("restarts", args.concurrency)
            r = loadgen.run_wrk(wrk, base + "/v1/models/fashion-gan/samples", body_load, load_s, seed_base=0,
                                headers=hdr)
            disruptor.join()
            check("rolling restarts and a SIGKILL under load", r["non_2xx"] == 0 and r["socket_errors"] == 0
                  and len(events) == 3, {"requests": r["requests"], "non_2xx": r["non_2xx"],
                                         "socket_errors": r["socket_errors"], "events": events})
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            for i in (0, 1):
                replicas.stop(i)
    if args.out_json:
        args.out_json.write_text(json.dumps(results, indent=2) + "\n")
    print("all checks passed" if not failures else f"FAILED: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The updater at N watched deployments, against a real kube-apiserver and a real registry.

    eval "$(scripts/toolchain env)"     # a running cluster (scripts/toolchain up), else one is started
    python bench/updater.py [--sizes 10,100,1000 | --quick] [--interval 10] [--hang 300]

For each N it creates N Deployments (replicas 0: the control loop is what is measured), each
on its own image in a private docker-registry, plus one Deployment whose rollout hangs (its
new pods never schedule, deadline ``--hang`` seconds). After a warm-up cycle it measures,
over ``--cycles`` unchanged cycles of the periodic job:

* registry requests per image per cycle (counted by the registry client);
* API-server requests per cycle on the updater's resources, counted AT the API server
  (``apiserver_request_total`` from its ``/metrics``, diffed; watches listed apart);
* CPU seconds of this process per cycle (the engine, its informers and the registry client);

then releases the hanging deployment's new version (its rollout starts hanging), pushes new
releases to 10 random images at random moments and runs the job every ``--interval``
seconds: detection-to-patch latency (push -> the patch visible at the API server, seen by
a watch) p50/p99. Targets: 0 API-server reads per unchanged cycle; p99 <= interval + 1 s
whatever the hanging rollout does; 1,000 deployments under 1 s of CPU per cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Executor, Future
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poller import kube
from poller.config import parse_config
from poller.http import RequestCounter
from poller.store import Store
from poller.targets.informer import Informer
from poller.updater.build import build_engine
from poller.updater.target_factory import TargetFactory
from tests.fixtures.apiserver_metrics import request_totals, workload_requests
from tests.fixtures.services import start_registry, stop_registry
from tests.integration.updater_support import seed_tag


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def kubectl(kubeconfig: str, *args: str, input: str | None = None) -> str:
    proc = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=input, capture_output=True,
                          text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def deployment(name: str, image: str, *, replicas: int = 0, hang: bool = False) -> dict:
    labels = {"app": name}
    spec: dict = {"replicas": replicas, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [{"name": "engine", "image": image}]}}}
    if hang:   # new pods never schedule, the old one stays: the rollout never completes
        spec["template"]["spec"]["nodeSelector"] = {"slipway-bench/never": "true"}
        spec["strategy"] = {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def run_size(n: int, args, kubeconfig: str, registry, tmp: Path) -> dict:
    ns = f"bench-{n}-{secrets.token_hex(3)}"
    kubectl(kubeconfig, "create", "namespace", ns)
    try:
        return _run_size(n, args, kubeconfig, registry, tmp, ns)
    finally:
        # waited for: the namespace controller's deletes must not count in the next size's cycles
        kubectl(kubeconfig, "delete", "namespace", ns, "--timeout=300s")


def _run_size(n: int, args, kubeconfig: str, registry, tmp: Path, ns: str) -> dict:
    images = [f"{registry.addr}/bench{n}/img{i}" for i in range(n)]
    for i in range(n):
        seed_tag(registry, f"bench{n}/img{i}", "1.0.0", build=f"{n}-{i}-1.0.0")
    seed_tag(registry, f"bench{n}/hang", "1.0.0", build=f"{n}-hang-1")
    hang_image = f"{registry.addr}/bench{n}/hang"
    objs = [deployment(f"d{i}", f"{images[i]}:1.0.0") for i in range(n)]
    objs.append(deployment("hang", f"{hang_image}:1.0.0", replicas=1, hang=True))
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    deployments = [{"name": f"d{i}", "image": images[i], "policy": "patch",
                    "target": {"kubernetes": {"kind": "Deployment", "name": f"d{i}", "namespace": ns,
                                              "container": "engine"}}} for i in range(n)]
    deployments.append({"name": "hang", "image": hang_image, "policy": "patch",
                        "target": {"kubernetes": {"kind": "Deployment", "name": "hang", "namespace": ns,
                                                  "container": "engine"}}})
    data = {"registry": {"url": registry.addr, "insecure": True}, "store": {"path": str(tmp / f"s{n}.db")},
            "updates": {"kubeconfig": kubeconfig, "interval": args.interval, "deployments": deployments}}
    cfg = parse_config(data, file="bench", env={})
    counter = RequestCounter()
    engine = build_engine(cfg, Store(tmp / f"s{n}.db"), counter=counter,
                          targets=TargetFactory(cfg.updates, rollout_timeout=args.hang))
    api = kube.api_client(kubeconfig)
    out: dict = {"N": n}
    try:
        t0 = cpu()
        first = engine.cycle(settle=False)
        out["first_cycle_cpu"] = cpu() - t0
        bad = [o for o in first if o.action != "up-to-date"]
        if bad:
            raise SystemExit(f"N={n}: warm-up cycle not up to date: {bad[:3]}")
        reg, api_reqs, reads, watches, cpus = [], [], [], [], []
        breakdown: dict = {}
        for _ in range(args.cycles):
            r0, a0, c0 = counter.total(), request_totals(api), cpu()
            outcomes = engine.cycle(settle=False)
            c1, a1, r1 = cpu(), request_totals(api), counter.total()
            assert all(o.action == "up-to-date" for o in outcomes)
            cpus.append(c1 - c0)
            reg.append((r1 - r0) / (n + 1))
            reqs = workload_requests(a0, a1)
            api_reqs.append(sum(reqs.values()))
            reads.append(sum(v for k, v in reqs.items() if k.split()[0] in ("GET", "LIST")))
            breakdown.update(reqs)
            watches.append(sum(workload_requests(a0, a1, watches=True).values()) - api_reqs[-1])
        walls = []
        for _ in range(2):
            w0 = time.monotonic()
            engine.cycle(settle=False)
            walls.append(time.monotonic() - w0)
        out["wall_per_cycle"] = statistics.mean(walls)
        out.update(registry_per_image=statistics.mean(reg), api_reads_per_cycle=max(reads),
                   api_requests_per_cycle=max(api_reqs), api_requests_seen=breakdown,
                   api_watch_ends_per_cycle=max(watches), cpu_per_cycle=statistics.mean(cpus),
                   cpu_per_cycle_max=max(cpus))
        if args.profile:
            out["cpu_per_cycle_profiled_inline"] = profile(engine, args, f"{args.profile}.{n}")
        if not args.no_latency:
            out.update(latency(n, args, engine, kubeconfig, registry, ns, images, hang_image))
    finally:
        engine.close()
    return out


class _Inline(Executor):
    """Runs what is submitted at once, in the caller's thread (so one profiler sees it all)."""

    def submit(self, fn, /, *args, **kwargs):
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - the future carries it
            fut.set_exception(exc)
        return fut


def profile(engine, args, path: str) -> float:
    """``args.cycles`` unchanged cycles under cProfile, the pool's work run inline; the stats go
    to ``path`` and the top of them to stderr. Returns the CPU seconds per cycle (profiler included)."""
    import cProfile
    import pstats

    pool, engine.pool = engine.pool, _Inline()
    prof = cProfile.Profile(time.process_time)   # CPU, not time spent waiting on sockets
    try:
        c0 = cpu()
        prof.enable()
        for _ in range(args.cycles):
            engine.cycle(settle=False)
        prof.disable()
        spent = (cpu() - c0) / args.cycles
    finally:
        engine.pool = pool
    prof.dump_stats(path)
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    return spent


def latency(n: int, args, engine, kubeconfig: str, registry, ns: str, images: list[str],
            hang_image: str) -> dict:
    """Detection-to-patch latency of releases pushed while another rollout hangs."""
    seen: dict[str, float] = {}
    watch = Informer(kube.api_client(kubeconfig), "Deployment", ns)   # the observer's own watch
    watch.wait_synced()
    stop = threading.Event()

    def observe():
        while not stop.is_set():
            for obj in watch.list():
                img = obj["spec"]["template"]["spec"]["containers"][0]["image"]
                if img.endswith(":1.0.1") and obj["metadata"]["name"] not in seen:
                    seen[obj["metadata"]["name"]] = time.time()
            watch.wait_for(lambda: False, 0.05)

    def scheduler():   # fixed rate, as ``poller run``'s interval trigger
        next_run = time.monotonic()
        while not stop.is_set():
            engine.cycle(settle=False)
            next_run += args.interval
            stop.wait(max(0.0, next_run - time.monotonic()))

    threading.Thread(target=observe, daemon=True).start()
    seed_tag(registry, f"bench{n}/hang", "1.0.1", build=f"{n}-hang-2")
    threading.Thread(target=scheduler, daemon=True).start()
    deadline = time.time() + 60
    while "hang" not in seen and time.time() < deadline:
        time.sleep(0.1)
    if "hang" not in seen:
        raise SystemExit(f"N={n}: the hanging deployment was never patched")
    picks = random.sample(range(n), min(args.releases, n))
    pushed: dict[str, float] = {}
    for i in picks:     # pushes spread over one interval, at random moments
        time.sleep(random.uniform(0, args.interval / len(picks)))
        seed_tag(registry, f"bench{n}/img{i}", "1.0.1", build=f"{n}-{i}-1.0.1")
        pushed[f"d{i}"] = time.time()
    deadline = time.time() + 3 * args.interval + 30
    while any(d not in seen for d in pushed) and time.time() < deadline:
        time.sleep(0.1)
    stop.set()
    watch.stop()
    lat = [seen[d] - t for d, t in pushed.items() if d in seen]
    missing = [d for d in pushed if d not in seen]
    hang_state = engine.pending.get("hang")
    return {"latency_p50": pct(lat, 0.5), "latency_p99": pct(lat, 0.99), "patched": f"{len(lat)}/{len(pushed)}",
            "missing": missing, "hang_still_rolling": hang_state is not None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--quick", action="store_true", help="N = 10, 100 only")
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--releases", type=int, default=10)
    p.add_argument("--hang", type=float, default=300.0, help="deadline of the hanging rollout, s")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", metavar="PATH", help="also profile the unchanged cycles (pstats to PATH.N)")
    p.add_argument("--no-latency", action="store_true", help="skip the release-latency part")
    args = p.parse_args()
    sizes = [10, 100] if args.quick else [int(x) for x in args.sizes.split(",")]
    kubeconfig = os.environ.get("SLIPWAY_KUBECONFIG")
    cluster = None
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if not kubeconfig:
            from tests.fixtures.cluster import st

            cluster = st.Cluster(str(tmp / "cluster"), st.Toolchain())
            kubeconfig = cluster.up()["kubeconfig"]
        registry = start_registry(tmp)
        try:
            rows = []
            for n in sizes:
                rows.append(run_size(n, args, kubeconfig, registry, tmp))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            stop_registry(registry)
            if cluster is not None:
                cluster.down(quiet=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = [("N", "N", "{}"), ("registry req/image/cycle", "registry_per_image", "{:.2f}"),
            ("API-server reads/cycle", "api_reads_per_cycle", "{}"),
            ("all API-server req/cycle (any client)", "api_requests_per_cycle", "{}"),
            ("CPU s/cycle", "cpu_per_cycle", "{:.3f}"), ("wall s/cycle", "wall_per_cycle", "{:.2f}"), ("latency p50 s", "latency_p50", "{:.2f}"),
            ("latency p99 s", "latency_p99", "{:.2f}"), ("patched", "patched", "{}")]
    print(f"interval {args.interval:.0f} s, {args.cycles} unchanged cycles, {args.releases} releases "
          f"while one rollout hangs (deadline {args.hang:.0f} s)")
    print(" | ".join(c[0] for c in cols))
    for r in rows:
        print(" | ".join(fmt.format(r[key]) if key in r else "-" for _, key, fmt in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Poll-cycle cost for GitLab sources against the GitLab REST double (see poll_cycle.py).

The double runs in its own process, so the CPU figures are the poller's alone.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SERVE = """
import sys, threading
from pathlib import Path
from tests.doubles.gitlab import GitLabDouble
from tests.doubles.gitrepo import GitRepo
root, n = Path(sys.argv[1]), int(sys.argv[2])
repo = GitRepo(root / "repo", name="template")
head = repo.commit("app", {"Dockerfile": "FROM scratch\\n"})
double = GitLabDouble(token=None)
for i in range(n):
    double.add_project(f"games/s{i:04d}", repo)
print(double.url, head, flush=True)
threading.Event().wait()
"""


def bench_gitlab(n: int, cycles: int, work: Path) -> list[dict]:
    from bench.poll_cycle import cpu, seed_image
    from poller.config import parse_config
    from poller.http import RequestCounter
    from poller.pipeline import Pipeline
    from poller.registry.client import RegistryClient
    from poller.sources.factory import make_source
    from poller.store import Store
    from tests.fixtures.services import start_registry, stop_registry

    work.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, "-c", _SERVE, str(work), str(n)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    url, head = server.stdout.readline().split()
    reg = start_registry(work / "registry")
    try:
        for i in range(n):
            seed_image(reg.url, f"s{i:04d}", head)
        data = {"registry": {"url": reg.addr, "insecure": True}, "api": {"listen": None},
                "store": {"path": str(work / "store.db")}, "state_dir": str(work / "state"),
                "poll": {"resync": 3600},
                "sources": [{"name": f"s{i:04d}", "branch": "master", "image": f"{reg.addr}/s{i:04d}",
                             "gitlab": {"url": url, "project": f"games/s{i:04d}"}} for i in range(n)]}
        cfg = parse_config(data, file="bench", env={})
        counter = RequestCounter()
        sources = {s.name: make_source(s, cache_dir=cfg.state_path, counter=counter) for s in cfg.sources}
        pipeline = Pipeline(cfg, store=Store(cfg.store_path), builder=None, sources=sources,
                            registry=RegistryClient(cfg.registry, counter=counter))
        rows = []
        for cycle in range(1, cycles + 1):
            counter.reset()
            c0, t0 = cpu(), time.perf_counter()
            reports = [pipeline.reconcile_source(name) for name in sources]
            c1, t1 = cpu(), time.perf_counter()
            rows.append({"kind": "gitlab", "sources": n, "cycle": cycle, "requests": counter.total(),
                         "req_per_source": counter.total() / n, "cpu_s": round(c1 - c0, 3),
                         "wall_s": round(t1 - t0, 3), "errors": sum(1 for r in reports if r.error),
                         "builds": sum(1 for r in reports for a in r.actions if a.action != "up-to-date")})
        pipeline.shutdown()
        return rows
    finally:
        server.terminate()
        stop_registry(reg)

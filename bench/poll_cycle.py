"""Cost of one poll cycle over many unchanged sources: HTTP requests and CPU seconds.

    python bench/poll_cycle.py [--counts 1,100,1000]

For each count N it creates N real git repositories served over smart HTTP by
``git http-backend`` (in a separate process), a real docker-registry holding each source's
``staging`` image (cross-repository blob mounts, no builds), and runs the pipeline:
cycle 1 checks the registry and converges; later cycles find nothing changed. It prints,
per cycle, requests per source and CPU seconds of this process (the poller) and its children.
Target: at most 1 request per source per unchanged cycle; 1,000 sources under 5 s of CPU.
With a GitLab test double available (tests/doubles/gitlab.py) the same is measured there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poller.builds.builder import LABEL_REVISION  # noqa: E402
from poller.config import parse_config  # noqa: E402
from poller.http import RequestCounter  # noqa: E402
from poller.pipeline import Pipeline  # noqa: E402
from poller.registry.client import RegistryClient  # noqa: E402
from poller.sources.factory import make_source  # noqa: E402
from poller.store import Store  # noqa: E402
from tests.doubles.gitrepo import GitRepo  # noqa: E402
from tests.fixtures.services import start_registry, stop_registry  # noqa: E402

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def put_blob(reg_url: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = requests.post(f"{reg_url}/v2/{repo}/blobs/uploads/")
    r.raise_for_status()
    loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else reg_url + loc
    sep = "&" if "?" in loc else "?"
    requests.put(f"{loc}{sep}digest={digest}", data=data,
                 headers={"Content-Type": "application/octet-stream"}).raise_for_status()
    return digest


def seed_image(reg_url: str, repo: str, revision: str) -> None:
    """A minimal image (config blob with the revision label, no layers) tagged staging."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {"Labels": {LABEL_REVISION: revision}}}).encode()
    digest = put_blob(reg_url, repo, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "layers": [],
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "size": len(config), "digest": digest}}).encode()
    requests.put(f"{reg_url}/v2/{repo}/manifests/staging", data=manifest,
                 headers={"Content-Type": MANIFEST}).raise_for_status()


def bench_git(n: int, cycles: int, work: Path) -> list[dict]:
    repos = work / f"git-{n}"
    template = GitRepo(work / "template", name="template")
    head = template.commit("app", {"Dockerfile": "FROM scratch\n"})
    for i in range(n):
        shutil.copytree(template.bare, repos / f"s{i:04d}.git")
    server = subprocess.Popen([sys.executable, "-m", "tests.doubles.git_http", str(repos)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()
    reg = start_registry(work / f"registry-{n}")
    try:
        for i in range(n):
            seed_image(reg.url, f"s{i:04d}", head)
        data = {"registry": {"url": reg.addr, "insecure": True},
                "store": {"path": str(work / f"store-{n}.db")}, "state_dir": str(work / "state"),
                "poll": {"resync": 3600},
                "sources": [{"name": f"s{i:04d}", "git": {"url": f"{url}/s{i:04d}.git"},
                             "branch": "master", "image": f"{reg.addr}/s{i:04d}"} for i in range(n)]}
        cfg = parse_config(data, file="bench", env={})
        counter = RequestCounter()
        store = Store(cfg.store_path)
        sources = {s.name: make_source(s, cache_dir=cfg.state_path, counter=counter) for s in cfg.sources}
        pipeline = Pipeline(cfg, store=store, registry=RegistryClient(cfg.registry, counter=counter),
                            builder=None, sources=sources)
        rows = []
        for cycle in range(1, cycles + 1):
            counter.reset()
            c0, t0 = cpu(), time.perf_counter()
            reports = [pipeline.reconcile_source(name) for name in sources]
            c1, t1 = cpu(), time.perf_counter()
            errors = [r.error for r in reports if r.error]
            built = sum(1 for r in reports for a in r.actions if a.action != "up-to-date")
            rows.append({"kind": "git-http", "sources": n, "cycle": cycle, "requests": counter.total(),
                         "req_per_source": counter.total() / n, "cpu_s": round(c1 - c0, 3),
                         "wall_s": round(t1 - t0, 3), "errors": len(errors), "builds": built})
        pipeline.shutdown()
        return rows
    finally:
        server.terminate()
        stop_registry(reg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1,100,1000")
    ap.add_argument("--cycles", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmp:
        work = Path(tmp)
        rows = []
        for n in [int(x) for x in args.counts.split(",")]:
            rows += bench_git(n, args.cycles, work / f"n{n}")
        try:
            from bench.gitlab_cycle import bench_gitlab  # written alongside the GitLab double
        except ImportError:
            bench_gitlab = None
        if bench_gitlab:
            for n in [int(x) for x in args.counts.split(",")]:
                rows += bench_gitlab(n, args.cycles, work / f"gl{n}")
    print(f"{'kind':10} {'sources':>7} {'cycle':>5} {'requests':>8} {'req/src':>7} {'cpu s':>7} {'wall s':>7}"
          f" {'errors':>6} {'builds':>6}")
    for r in rows:
        print(f"{r['kind']:10} {r['sources']:7d} {r['cycle']:5d} {r['requests']:8d} {r['req_per_source']:7.2f}"
              f" {r['cpu_s']:7.3f} {r['wall_s']:7.3f} {r['errors']:6d} {r['builds']:6d}")


if __name__ == "__main__":
    main()

"""The build queue (PostgreSQL store, procrastinate, ``poller worker``) against direct builds,
and leader takeover among ``poller run`` replicas.

    python bench/build_queue.py [--workers 1,2] [--builds 12] [--rounds 5] [--takeovers 5]

Real parts: docker-registry, dockerd, git, PostgreSQL (``scripts/services up postgres``; a
fresh database per run). Builds are of a tiny image (FROM scratch + busybox, a new commit each).

  overhead    side by side, interleaved per round: one build in-process (Pipeline.build_claimed,
              SQLite store, as ``poller run`` does with SQLite) and one enqueued to an idle
              worker and waited for; overhead = queued wall - direct wall (median)
  throughput  ``--builds`` jobs enqueued at once to N workers (concurrency 1 each):
              jobs per second, wall from the first enqueue to the last build finished
  takeover    two ``poller run`` replicas; kill -9 the leader; seconds until the other one
              logs leader.elected (median, max), against 2x the configured leader interval
Targets (issue 13): queue overhead under 5% of a small build; takeover within 2x the lease.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poller.runtime import build_pipeline
from poller.builds.builder import BuildPlan
from poller.config import parse_config
from poller.pipeline import Action
from poller.queue import BuildQueue
from poller.store import Store
from tests.doubles.gitrepo import GitRepo
from tests.fixtures.services import start_registry, stop_registry


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        threading.Event().wait(0.02)


def pg_database() -> str:
    import psycopg

    subprocess.run([str(ROOT / "scripts" / "services"), "up", "postgres"], check=True,
                   capture_output=True, timeout=120)
    admin = os.environ.get("SLIPWAY_PG_URL", "postgresql://postgres@127.0.0.1:55432/slipway")
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0] + "/" + name


def docker_host() -> str:
    out = subprocess.run([str(ROOT / "scripts" / "services"), "env"], capture_output=True,
                         text=True, check=True).stdout
    return next((ln.split("=", 1)[1] for ln in out.splitlines()
                 if ln.startswith("export DOCKER_HOST=")), "unix:///var/run/docker.sock")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default="1,2", help="worker counts for the throughput runs")
    ap.add_argument("--builds", type=int, default=12, help="jobs per throughput run")
    ap.add_argument("--rounds", type=int, default=5, help="direct/queued pairs for the overhead")
    ap.add_argument("--takeovers", type=int, default=5)
    ap.add_argument("--leader-interval", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="slipway-bench-queue-"))
    registry = start_registry(tmp / "registry")
    host = docker_host()
    pg = pg_database()
    repo = GitRepo(tmp / "git", name="bench")
    repo.seed_scratch_app("v0\n")
    base = {"registry": {"url": registry.addr, "insecure": True}, "api": {"listen": None},
            "build": {"concurrency": 1}, "docker": {"base_url": host},
            "sources": [{"name": "bench", "git": {"url": repo.url}, "branch": "master",
                         "image": f"{registry.addr}/bench"}]}
    direct_cfg = parse_config({**base, "store": {"path": str(tmp / "direct.db")},
                               "state_dir": str(tmp / "direct")}, file="bench")
    queue_data = {**base, "store": {"url": pg, "leader_interval": args.leader_interval,
                                    "queue": {"lease": 10}}, "state_dir": str(tmp / "queued")}
    queue_yaml = tmp / "queue.yaml"
    queue_yaml.write_text(yaml.safe_dump(queue_data))
    store = Store(pg)
    direct = build_pipeline(direct_cfg, queue=False)
    queue = BuildQueue(pg)
    procs: list[subprocess.Popen] = []
    counter = [0]

    def plan() -> BuildPlan:
        counter[0] += 1
        i = counter[0]
        sha = repo.commit(f"build {i}", {"app.txt": f"build {i} {uuid.uuid4().hex}\n"})
        return BuildPlan(source="bench", image=f"{registry.addr}/bench", ref=f"branch:b{i}",
                         kind="staging", sha=sha, version=f"sha-{sha[:12]}", tags=(f"b{i}",))

    def act(p: BuildPlan) -> Action:
        return Action(source=p.source, ref=p.ref, sha=p.sha, kind=p.kind, tags=list(p.tags),
                      action="build", status="pending")

    def done(shas: set[str]) -> bool:
        rows = store.execute("SELECT sha, status FROM builds WHERE status != 'running'").fetchall()
        finished = {r["sha"] for r in rows}
        return shas <= finished

    def worker() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "poller", "worker", "--config", str(queue_yaml),
                                 "--concurrency", "1"], cwd=ROOT, env={**os.environ, "DOCKER_HOST": host},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(ps: list[subprocess.Popen]) -> None:
        for p in ps:
            p.send_signal(signal.SIGTERM)
        for p in ps:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    result: dict = {}
    try:
        # -- overhead: one direct and one queued build per round, interleaved -----------------
        procs = [worker()]
        warm = plan()
        queue.enqueue(warm, act(warm))
        wait(lambda: done({warm.sha}), 120, "the warm-up build")
        first = plan()
        direct.build_claimed(first, act(first))  # warm the direct path too
        pairs = []
        for _ in range(args.rounds):
            p = plan()
            t = time.monotonic()
            res = direct.build_claimed(p, act(p))
            d = time.monotonic() - t
            assert res.status == "succeeded", res.error
            q = plan()
            t = time.monotonic()
            queue.enqueue(q, act(q))
            wait(lambda q=q: done({q.sha}), 120, "a queued build")
            pairs.append((d, time.monotonic() - t))
            print(f"  direct {d:6.2f}s  queued {pairs[-1][1]:6.2f}s", file=sys.stderr, flush=True)
        stop(procs)
        d_med = statistics.median(d for d, _ in pairs)
        q_med = statistics.median(q for _, q in pairs)
        result["overhead"] = {"direct_s": round(d_med, 3), "queued_s": round(q_med, 3),
                              "overhead_s": round(q_med - d_med, 3),
                              "overhead_pct": round(100 * (q_med - d_med) / d_med, 1)}

        # -- throughput with N workers ------------------------------------------------------
        result["throughput"] = []
        for n in [int(x) for x in args.workers.split(",")]:
            procs = [worker() for _ in range(n)]
            wait(lambda n=n: store.execute("SELECT COUNT(*) FROM procrastinate_workers")
                 .fetchone()[0] >= n, 60, "workers up")
            plans = [plan() for _ in range(args.builds)]
            t = time.monotonic()
            for p in plans:
                queue.enqueue(p, act(p))
            wait(lambda plans=plans: done({p.sha for p in plans}), 600, "the throughput builds")
            wall = time.monotonic() - t
            stop(procs)
            result["throughput"].append({"workers": n, "jobs": args.builds, "wall_s": round(wall, 2),
                                         "jobs_per_s": round(args.builds / wall, 3)})
            print(f"  {n} worker(s): {args.builds} jobs in {wall:.1f}s", file=sys.stderr, flush=True)

        # -- leader takeover ------------------------------------------------------------------
        times = []
        logs = [tmp / "replica-a.log", tmp / "replica-b.log"]

        def replica(log: Path) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "poller", "--log-format", "json", "run",
                                     "--config", str(queue_yaml)], cwd=ROOT,
                                    stdout=open(log, "a"), stderr=subprocess.STDOUT)

        def elected(log: Path) -> int:
            return log.read_text().count('"leader.elected"') if log.exists() else 0

        procs = [replica(log) for log in logs]
        wait(lambda: sum(map(elected, logs)) >= 1, 60, "a first leader")
        leading = [elected(log) > 0 for log in logs]
        for _ in range(args.takeovers):
            leader = next(i for i in range(2) if leading[i])
            other = 1 - leader
            before = elected(logs[other])
            t = time.monotonic()
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait(10)
            wait(lambda o=other, b=before: elected(logs[o]) > b, 60, "the takeover")
            times.append(time.monotonic() - t)
            leading = [i == other for i in range(2)]
            print(f"  takeover {times[-1]:.2f}s", file=sys.stderr, flush=True)
            started = logs[leader].read_text().count('"scheduler.started"')
            procs[leader] = replica(logs[leader])  # back as a follower, before the next kill
            wait(lambda i=leader, n=started: logs[i].read_text().count('"scheduler.started"') > n,
                 60, "the replica back")
            threading.Event().wait(2 * args.leader_interval)  # its first try for the lock done
        stop(procs)
        result["takeover"] = {"interval_s": args.leader_interval, "median_s": round(statistics.median(times), 2),
                              "max_s": round(max(times), 2), "runs": len(times)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        queue.close()
        stop_registry(registry)

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        o = result["overhead"]
        print(f"overhead: direct {o['direct_s']}s, queued {o['queued_s']}s -> "
              f"+{o['overhead_s']}s ({o['overhead_pct']}%)")
        for t in result["throughput"]:
            print(f"throughput: {t['workers']} worker(s): {t['jobs_per_s']} jobs/s "
                  f"({t['jobs']} in {t['wall_s']}s)")
        k = result["takeover"]
        print(f"takeover: median {k['median_s']}s, max {k['max_s']}s "
              f"(leader interval {k['interval_s']}s; target < {2 * k['interval_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time from ``git push`` of a tag to its build starting: with a push webhook, and without.

    python bench/webhook_latency.py [--trials 3] [--interval 5]

Runs a real ``poller run`` against a real git repository, the local Docker engine
(``scripts/services up docker``) and a fresh docker-registry, twice:

* webhook: poll interval one hour; after each ``git push`` of a new tag, a GitLab-style tag
  push hook is POSTed to ``/hooks/gitlab`` (as GitLab does once it has the push);
* polling only: poll interval ``--interval`` seconds and no hook.

The clock starts before ``git push`` and stops when the poller's API lists the tag's build
(status ``running``). Each build is let finish before the next trial. Target: under 1 s with
the webhook; within one poll interval without.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.doubles.gitrepo import GitRepo  # noqa: E402
from tests.fixtures.services import free_port, start_registry, stop_registry, wait_until  # noqa: E402
from tests.integration.test_webhooks_e2e import gitlab_push_hook, start_poller  # noqa: E402


def docker_host() -> str:
    res = subprocess.run([str(ROOT / "scripts" / "services"), "up", "docker"], text=True, capture_output=True)
    if res.returncode != 0:
        sys.exit(f"scripts/services up docker failed:\n{res.stderr}")
    env = dict(line[len("export "):].split("=", 1) for line in res.stdout.splitlines()
               if line.startswith("export "))
    return env.get("DOCKER_HOST") or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def measure(root: Path, dhost: str, *, webhook: bool, trials: int, interval: float) -> list[float]:
    root.mkdir(parents=True)
    registry = start_registry(root / "registry")
    repo = GitRepo(root / "git", name="game-server")
    repo.seed_scratch_app("v0\n")
    run = start_poller(root, repo.url, registry.addr, dhost, api_port=free_port(),
                       interval=3600.0 if webhook else interval)
    times = []
    try:
        wait_until(lambda: (b := run.build_for("branch:master")) and b["status"] == "succeeded",
                   timeout=180, what="the start-up build")
        for i in range(trials):
            tag = f"v1.{i}.0"
            repo.commit(f"release {tag}", {"app.txt": f"{tag}\n"}, push=False)
            t0 = time.monotonic()
            repo.tag(tag)  # pushes the tag
            if webhook:
                r = gitlab_push_hook(run.api, git_url=repo.url, ref=f"refs/tags/{tag}", after=repo.head())
                r.raise_for_status()
            wait_until(lambda: run.build_for(f"tag:{tag}"), timeout=interval * 3 + 30, interval=0.01,
                       what=f"the build of {tag}")
            times.append(time.monotonic() - t0)
            wait_until(lambda: run.build_for(f"tag:{tag}")["status"] != "running", timeout=180,
                       what=f"the build of {tag} to finish")
    finally:
        run.stop()
        stop_registry(registry)
        registry.sink.shutdown()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--interval", type=float, default=5.0, help="poll interval for the run without webhook")
    args = parser.parse_args()
    dhost = docker_host()
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmp:
        hook = measure(Path(tmp) / "webhook", dhost, webhook=True, trials=args.trials, interval=args.interval)
        poll = measure(Path(tmp) / "poll", dhost, webhook=False, trials=args.trials, interval=args.interval)
    print(f"{'mode':<28}{'median s':>10}{'max s':>10}  trials")
    print(f"{'webhook (poll every 3600 s)':<28}{statistics.median(hook):>10.3f}{max(hook):>10.3f}  "
          + " ".join(f"{t:.3f}" for t in hook))
    print(f"{f'polling every {args.interval:g} s':<28}{statistics.median(poll):>10.3f}{max(poll):>10.3f}  "
          + " ".join(f"{t:.3f}" for t in poll))
    ok_hook, ok_poll = max(hook) < 1.0, max(poll) <= args.interval * 1.1 + 1.0
    print(f"target: webhook < 1 s: {'met' if ok_hook else 'MISSED'}; "
          f"polling within one interval: {'met' if ok_poll else 'MISSED'}")
    return 0 if ok_hook and ok_poll else 1


if __name__ == "__main__":
    sys.exit(main())

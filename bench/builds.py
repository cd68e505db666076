"""Docker's classic builder vs BuildKit, side by side on the same commits and registry.

    python bench/builds.py [--work 300] [--packages 8] [--package-kb 512]

A multi-stage game-server build: ``deps`` downloads jars from a local package repository
(an HTTP server that counts requests; behind ``RUN --mount=type=cache`` for BuildKit),
``assets`` and ``app`` each do real CPU work (hashing ``--work`` MiB), the final stage copies
from all three. Both engines are driven through Slipway's own builders (DockerBuilder,
BuildKitBuilder) against a real docker-registry and a real buildkitd (scripts/toolchain).

Cases, for each engine:
  cold   the first build (a nonce in every stage busts any earlier layer cache)
  warm   a rebuild after a one-line change to the app stage
  fresh  a rebuild of that commit on a fresh builder: BuildKit gets a new buildkitd (empty
         state dir) that imports the registry cache; the classic builder has no registry
         cache, so a fresh engine repeats the whole build (measured with a new nonce)

Cases run interleaved (classic, then BuildKit, per case) so both see the same machine load;
with --repeat N the rounds repeat (a new nonce makes each round cold again) and wall times are
medians, the other figures from round 1 (the only truly cold one for the classic builder,
whose local layer cache survives between rounds).
Figures: wall time, requests to the package repository, bytes of image blobs pushed (and of
cache blobs for BuildKit), the bytes of layers that really changed, and BuildKit / classic.
"The changed step alone" is BuildKit's own timing of the app stage's RUN in the warm build.
Targets (issue 12): cold >= 1.6x faster with parallel stages; warm within 20% of the changed
step alone; a fresh builder downloads no dependency; no more image bytes than changed layers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poller.builds.builder import BuildPlan, DockerBuilder
from poller.builds.buildkit import BuildKitBuilder
from poller.config import parse_config
from poller.sources.factory import make_source
from tests.doubles.gitrepo import BUSYBOX, GitRepo
from tests.doubles.packages import PackageRepo
from tests.fixtures.cluster import st
from tests.fixtures.services import start_registry, stop_registry

DEPS = """FROM tools AS deps
COPY nonce.txt deps.txt /
RUN {mount}["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /m2 /lib/app && for p in $(/bin/busybox cat /deps.txt); do [ -f /m2/$p ] || /bin/busybox wget -q -O /m2/$p {repo}/packages/$p || exit 1; /bin/busybox cp /m2/$p /lib/app/; done"]
"""

DOCKERFILE = """FROM scratch AS tools
COPY busybox /bin/busybox

{deps}
FROM tools AS assets
COPY nonce.txt /
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox dd if=/dev/zero bs=1M count={work} 2>/dev/null | /bin/busybox sha256sum > /assets.sum"]

FROM tools AS app
COPY nonce.txt app.txt /
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox dd if=/dev/zero bs=1M count={work} 2>/dev/null | /bin/busybox sha256sum > /app.sum && /bin/busybox cat /app.txt >> /app.sum"]

FROM scratch
COPY --from=tools /bin/busybox /bin/busybox
COPY --from=deps /lib/app /lib/app
COPY --from=assets /assets.sum /assets.sum
COPY --from=app /app.sum /app.sum
CMD ["/bin/busybox", "cat", "/app.sum"]
"""


def dockerfiles(repo_url: str, work: int) -> dict[str, str]:
    classic = DEPS.format(mount="", repo=repo_url).replace("/m2", "/tmp/m2")
    kit = DEPS.format(mount="--mount=type=cache,target=/m2,id=bench-m2 ", repo=repo_url)
    return {"Dockerfile": DOCKERFILE.format(deps=classic, work=work),
            "Dockerfile.buildkit": DOCKERFILE.format(deps=kit, work=work)}


def bridge_gateway() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True).stdout
    parts = out.split()
    return parts[parts.index("inet") + 1].split("/")[0] if "inet" in parts else "127.0.0.1"


def changed_step_seconds(log: str) -> float:
    """How long the changed step (the app stage's RUN) took inside the warm build itself,
    from BuildKit's own timing of that step (``#N DONE 3.1s``)."""
    number = next(ln.split()[0] for ln in log.splitlines() if ln.startswith("#") and "[app 2/2] RUN" in ln)
    done = next(ln for ln in log.splitlines() if ln.startswith(number + " DONE "))
    return float(done.split()[-1].rstrip("s"))


class Pushes:
    """Blob bytes pushed per repository, from the registry's own notifications."""

    def __init__(self, registry):
        self.registry = registry
        self.seen = 0

    def take(self) -> dict[str, int]:
        events = self.registry.events("push")
        new, self.seen = events[self.seen:], len(events)
        out: dict[str, int] = {}
        for e in new:
            t = e.get("target", {})
            if "manifest" in t.get("mediaType", "") or "index" in t.get("mediaType", ""):
                continue
            out[t.get("repository", "")] = out.get(t.get("repository", ""), 0) + int(t.get("size") or 0)
        return out


def layer_sizes(registry, repo: str, tag: str) -> dict[str, int]:
    accept = ", ".join(["application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.oci.image.manifest.v1+json"])
    m = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}, timeout=10).json()
    sizes = {m["config"]["digest"]: m["config"]["size"]}
    sizes.update({layer["digest"]: layer["size"] for layer in m["layers"]})
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=int, default=300, help="MiB hashed by each compute stage")
    ap.add_argument("--packages", type=int, default=8)
    ap.add_argument("--package-kb", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=1, help="rounds; wall times are the median")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--log", action="store_true", help="print the build logs, with elapsed seconds")
    args = ap.parse_args()
    # A stopped run (SIGTERM) still takes down its buildkitd daemons and registry (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tmp = Path(tempfile.mkdtemp(prefix="slipway-bench-builds-"))
    bk_dirs = [tempfile.mkdtemp(prefix="bk-bench-", dir="/tmp") for _ in range(2 * args.repeat)]
    registry = start_registry(tmp / "registry")
    # Classic-builder RUN steps use docker's bridge network: serve on its gateway address,
    # which BuildKit's host-network steps reach too.
    packages = PackageRepo(host=bridge_gateway(), size=args.package_kb * 1024)
    daemons = []
    rounds: dict[str, dict[str, list[dict]]] = {"classic": {}, "buildkit": {}}
    steps: list[float] = []
    try:
        bk_tc = st.build_buildkit()
        repo = GitRepo(tmp / "git", name="bench")
        shutil.copy(BUSYBOX, repo.work / "busybox")
        deps = "".join(f"lib-{i}.jar\n" for i in range(args.packages))
        files = {**dockerfiles(packages.url, args.work), "deps.txt": deps, "app.txt": "version 1\n",
                 "nonce.txt": uuid.uuid4().hex}
        cold_sha = repo.commit("cold", files)

        def cfg(dockerfile: str, address: str):
            return parse_config({
                "registry": {"url": registry.addr, "insecure": True},
                "state_dir": str(tmp / "state"),
                "build": {"engine": "buildkit", "buildkit": {
                    "addresses": [address], "buildctl": str(bk_tc.bindir / "buildctl"),
                    "cache_ref": f"{registry.addr}/bench-cache:buildkit"}},
                "sources": [{"name": "bench", "git": {"url": repo.url}, "branch": "master",
                             "image": f"{registry.addr}/bench", "dockerfile": dockerfile}]})

        import docker

        docker_host = subprocess.run([str(ROOT / "scripts" / "services"), "env"], capture_output=True,
                                     text=True).stdout
        base_url = next((ln.split("=", 1)[1] for ln in docker_host.splitlines()
                         if ln.startswith("export DOCKER_HOST=")), "unix:///var/run/docker.sock")
        pushes = Pushes(registry)

        def run(engine: str, case: str, builder, c, sha: str, image: str, tags: tuple[str, ...]):
            plan = BuildPlan(source="bench", image=f"{registry.addr}/{image}", ref="branch:master",
                             kind="staging", sha=sha, version=f"sha-{sha[:12]}", tags=tags)
            before = packages.fetches()
            pushes.take()
            src = make_source(c.sources[0], cache_dir=tmp / "state")
            t = time.monotonic()

            def show(text: str) -> None:
                if args.log:
                    for line in text.splitlines():
                        print(f"    {time.monotonic() - t:6.2f} {line}", file=sys.stderr)
            res = builder.build(plan, src, c.sources[0], show)
            wall = time.monotonic() - t
            pushed = pushes.take()
            rounds[engine].setdefault(case, []).append({"wall_s": round(wall, 2), "package_requests": packages.fetches() - before,
                                     "image_bytes_pushed": pushed.get(image, 0),
                                     "cache_bytes_pushed": pushed.get("bench-cache", 0),
                                     "digest": res.digest})
            print(f"  {engine:8} {case:5} {wall:7.1f}s  requests {packages.fetches() - before:3d}  "
                  f"image bytes {pushed.get(image, 0):>10,}  cache bytes {pushed.get('bench-cache', 0):>10,}",
                  file=sys.stderr, flush=True)
            return res

        def changed_bytes(image: str, old: str, new: str) -> int:
            a, b = layer_sizes(registry, image, old), layer_sizes(registry, image, new)
            return sum(size for digest, size in b.items() if digest not in a)

        # ---- classic -------------------------------------------------------------------
        classic_cfg = cfg("Dockerfile", f"unix://{bk_dirs[0]}/buildkitd.sock")
        classic = DockerBuilder(lambda: docker.DockerClient(base_url=base_url, timeout=600),
                                classic_cfg.registry)
        # Interleaved, classic then BuildKit for each case, so both see the same machine load.
        for r in range(args.repeat):
            if r:
                repo.commit(f"round {r + 1}: cold again", {"nonce.txt": uuid.uuid4().hex, "app.txt": "version 1\n"})
            cold_sha = repo.head()
            first = st.BuildKitd(bk_dirs[2 * r], toolchain=bk_tc)
            first.up()
            daemons.append(first)
            bk_cfg = cfg("Dockerfile.buildkit", first.address)
            kit = BuildKitBuilder(bk_cfg.build.buildkit, bk_cfg.registry)
            run("classic", "cold", classic, classic_cfg, cold_sha, "classic", (f"cold-{r}",))
            run("buildkit", "cold", kit, bk_cfg, cold_sha, "bench", (f"cold-{r}",))
            warm_sha = repo.commit("one-line change", {"app.txt": "version 2\n"})
            run("classic", "warm", classic, classic_cfg, warm_sha, "classic", (f"warm-{r}",))
            res = run("buildkit", "warm", kit, bk_cfg, warm_sha, "bench", (f"warm-{r}",))
            rounds["classic"]["warm"][-1]["changed_layer_bytes"] = changed_bytes("classic", f"cold-{r}", f"warm-{r}")
            rounds["buildkit"]["warm"][-1]["changed_layer_bytes"] = changed_bytes("bench", f"cold-{r}", f"warm-{r}")
            steps.append(changed_step_seconds(res.log))
            first.down(quiet=True)
            fresh_classic = repo.commit("fresh engine (nonce)", {"nonce.txt": uuid.uuid4().hex})
            run("classic", "fresh", classic, classic_cfg, fresh_classic, "classic", (f"fresh-{r}",))
            fresh = st.BuildKitd(bk_dirs[2 * r + 1], toolchain=bk_tc)
            fresh.up()
            daemons.append(fresh)
            fresh_cfg = cfg("Dockerfile.buildkit", fresh.address)
            run("buildkit", "fresh", BuildKitBuilder(fresh_cfg.build.buildkit, fresh_cfg.registry), fresh_cfg,
                warm_sha, "bench", (f"fresh-{r}",))
            fresh.down(quiet=True)
    finally:
        for d in daemons:
            d.down(quiet=True)
        packages.stop()
        stop_registry(registry)
        registry.sink.shutdown()
        for d in bk_dirs:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    def median(values: list[float]) -> float:
        v = sorted(values)
        return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2

    results: dict = {"classic": {}, "buildkit": {}, "rounds": args.repeat, "work_mib": args.work,
                     "changed_step_s": round(median(steps), 2), "walls": {}}
    for engine, cases in rounds.items():
        for case, runs in cases.items():
            results[engine][case] = {**runs[0], "wall_s": round(median([x["wall_s"] for x in runs]), 2)}
            results["walls"][f"{engine} {case}"] = [x["wall_s"] for x in runs]
    c, k = results["classic"], results["buildkit"]
    ratios = {case: round(k[case]["wall_s"] / c[case]["wall_s"], 2) for case in ("cold", "warm", "fresh")}
    results["ratio_buildkit_over_classic"] = ratios
    results["targets"] = {
        "cold_speedup": round(c["cold"]["wall_s"] / k["cold"]["wall_s"], 2),
        "cold_speedup_ok (>=1.6)": c["cold"]["wall_s"] / k["cold"]["wall_s"] >= 1.6,
        "warm_over_changed_step": round(k["warm"]["wall_s"] / results["changed_step_s"], 2),
        "warm_ok (<=1.2)": k["warm"]["wall_s"] <= 1.2 * results["changed_step_s"],
        "fresh_downloads": k["fresh"]["package_requests"],
        "fresh_ok (0)": k["fresh"]["package_requests"] == 0,
        "warm_image_bytes_ok (<= changed layers)":
            k["warm"]["image_bytes_pushed"] <= k["warm"]["changed_layer_bytes"],
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"\n{'case':6} {'classic s':>10} {'BuildKit s':>11} {'ratio':>6}  {'pkg req c/k':>11}  "
          f"{'image bytes c/k':>23}  {'cache bytes k':>13}")
    for case in ("cold", "warm", "fresh"):
        print(f"{case:6} {c[case]['wall_s']:10.1f} {k[case]['wall_s']:11.1f} {ratios[case]:6.2f}  "
              f"{c[case]['package_requests']:5d}/{k[case]['package_requests']:<5d}  "
              f"{c[case]['image_bytes_pushed']:>11,}/{k[case]['image_bytes_pushed']:<11,}  "
              f"{k[case]['cache_bytes_pushed']:>13,}")
    print(f"rounds: {args.repeat}, wall times are medians: " + json.dumps(results["walls"]))
    print(f"changed step (BuildKit's timing, warm build): {results['changed_step_s']:.1f}s; "
          f"changed layers (warm): classic "
          f"{c['warm']['changed_layer_bytes']:,} B, BuildKit {k['warm']['changed_layer_bytes']:,} B")
    for name, value in results["targets"].items():
        print(f"  {name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

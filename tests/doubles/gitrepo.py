"""Real git repositories for tests: a bare 'remote' plus a working clone to commit from."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Slipway Test", "GIT_AUTHOR_EMAIL": "test@slipway.invalid",
    "GIT_COMMITTER_NAME": "Slipway Test", "GIT_COMMITTER_EMAIL": "test@slipway.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "HOME": os.environ.get("HOME", "/root"),
}

BUSYBOX = "/bin/busybox"

#: A Dockerfile that needs no registry: busybox-static copied into an empty image.
SCRATCH_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY app.txt /app.txt
CMD ["/bin/busybox", "cat", "/app.txt"]
"""


def git(*args: str, cwd: str | Path | None = None, check: bool = True) -> str:
    env = {**os.environ, **GIT_ENV}
    res = subprocess.run(["git", *args], cwd=cwd, env=env, text=True, capture_output=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout.strip()


class GitRepo:
    """A bare repository at ``bare`` and a working clone at ``work`` that pushes to it."""

    def __init__(self, root: Path, name: str = "game-server", branch: str = "master"):
        self.root = Path(root).resolve()
        self.name = name
        self.branch = branch
        self.bare = self.root / f"{name}.git"
        self.work = self.root / f"{name}-work"
        git("init", "--bare", "-q", "-b", branch, str(self.bare))
        git("init", "-q", "-b", branch, str(self.work))
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def write(self, relpath: str, content: str | bytes, mode: int | None = None) -> None:
        p = self.work / relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
        if mode is not None:
            p.chmod(mode)

    def commit(self, message: str = "change", files: dict[str, str | bytes] | None = None,
               push: bool = True) -> str:
        for rel, content in (files or {}).items():
            self.write(rel, content)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        sha = git("rev-parse", "HEAD", cwd=self.work)
        if push:
            git("push", "-q", "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.work)
        return sha

    def tag(self, name: str, sha: str | None = None, annotated: bool = True) -> None:
        target = sha or "HEAD"
        if annotated:
            git("tag", "-a", name, "-m", f"release {name}", target, cwd=self.work)
        else:
            git("tag", name, target, cwd=self.work)
        git("push", "-q", "origin", f"refs/tags/{name}", cwd=self.work)

    def head(self) -> str:
        return git("rev-parse", f"refs/heads/{self.branch}", cwd=self.bare)

    def seed_scratch_app(self, text: str = "v1\n") -> str:
        """Commit a buildable app (FROM scratch + busybox) and return the commit."""
        shutil.copy(BUSYBOX, self.work / "busybox")
        return self.commit("app", {"Dockerfile": SCRATCH_DOCKERFILE, "app.txt": text})

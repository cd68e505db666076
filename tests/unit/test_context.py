import io
import tarfile

import pytest

from poller.builds.context import OUTSIDE_DOCKERFILE, make_context
from poller.errors import BuildError


def archive(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def names(buf: io.BytesIO) -> dict[str, bytes]:
    buf.seek(0)
    with tarfile.open(fileobj=buf) as t:
        return {m.name: t.extractfile(m).read() for m in t if m.isfile()}


def test_whole_repo_context():
    out = io.BytesIO()
    df = make_context(archive({"Dockerfile": b"FROM scratch", "a.txt": b"a"}), out)
    assert df == "Dockerfile" and names(out) == {"Dockerfile": b"FROM scratch", "a.txt": b"a"}


def test_subdir_context_with_dockerfile_inside():
    out = io.BytesIO()
    df = make_context(archive({"app/Dockerfile": b"X", "app/a": b"a", "other/b": b"b"}), out,
                      context="app", dockerfile="app/Dockerfile")
    assert df == "Dockerfile" and names(out) == {"Dockerfile": b"X", "a": b"a"}


def test_dockerfile_outside_context():
    out = io.BytesIO()
    df = make_context(archive({"docker/Dockerfile": b"X", "src/a": b"a"}), out, context="src",
                      dockerfile="docker/Dockerfile")
    assert df == OUTSIDE_DOCKERFILE and names(out) == {"a": b"a", OUTSIDE_DOCKERFILE: b"X"}


def test_docker_subdir_dockerfile_with_root_context():
    out = io.BytesIO()
    df = make_context(archive({"docker/Dockerfile": b"X", "a": b"a"}), out, context=".",
                      dockerfile="docker/Dockerfile")
    assert df == "docker/Dockerfile" and set(names(out)) == {"docker/Dockerfile", "a"}


def test_missing_dockerfile_is_a_build_error():
    with pytest.raises(BuildError, match="Dockerfile 'Dockerfile' is not in the repository"):
        make_context(archive({"a": b"a"}), io.BytesIO())

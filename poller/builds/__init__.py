"""Builds: from one exact commit to a pushed, labelled image."""

from poller.builds.builder import BuildPlan, BuildResult, DockerBuilder

__all__ = ["BuildPlan", "BuildResult", "DockerBuilder"]

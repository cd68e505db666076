"""Job templating and phases: pure dict in, dict out (what `kubectl create job --from` does)."""

from __future__ import annotations

import copy

import pytest

from helm_api.config import HelmApiConfig
from helm_api.jobs import (
    CronJobInvalid,
    is_finished,
    job_from_cronjob,
    job_name,
    job_phase,
    job_summary,
)

CRONJOB = {
    "apiVersion": "batch/v1", "kind": "CronJob",
    "metadata": {"name": "helmsman-cronjob", "namespace": "ci", "uid": "1234-abcd",
                 "labels": {"on-cronjob": "only"}, "annotations": {"cj-note": "x"}},
    "spec": {
        "schedule": "0 4 * * *", "suspend": True,
        "jobTemplate": {
            "metadata": {"labels": {"app.kubernetes.io/name": "helmsman"},
                         "annotations": {"team": "sre"}},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [
                    {"name": "sidecar", "image": "busybox"},
                    {"name": "helmsman", "image": "helmsman:4",
                     "env": [{"name": "DSS_FILE", "value": "default.yaml"},
                             {"name": "KEEP", "value": "1"}]},
                ]}}},
        },
    },
}


def test_job_is_what_kubectl_create_job_from_builds():
    original = copy.deepcopy(CRONJOB)
    job = job_from_cronjob(CRONJOB, "run-1")
    assert CRONJOB == original  # the CronJob is not modified
    meta = job["metadata"]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert meta["name"] == "run-1" and meta["namespace"] == "ci"
    assert meta["annotations"] == {"cronjob.kubernetes.io/instantiate": "manual", "team": "sre"}
    assert meta["labels"] == {"app.kubernetes.io/name": "helmsman"}  # template's, not the CronJob's
    assert meta["ownerReferences"] == [{
        "apiVersion": "batch/v1", "kind": "CronJob", "name": "helmsman-cronjob",
        "uid": "1234-abcd", "controller": True, "blockOwnerDeletion": True}]
    assert job["spec"] == CRONJOB["spec"]["jobTemplate"]["spec"]


def test_environment_sets_dss_file_in_the_named_container_only():
    job = job_from_cronjob(CRONJOB, "run-2", container="helmsman",
                           env_vars={"DSS_FILE": "production.yaml"},
                           labels={"slipway.dev/environment": "production"},
                           annotations={"slipway.dev/reason": "why"})
    sidecar, helmsman = job["spec"]["template"]["spec"]["containers"]
    assert "env" not in sidecar
    assert helmsman["env"] == [{"name": "KEEP", "value": "1"},
                               {"name": "DSS_FILE", "value": "production.yaml"}]
    assert job["metadata"]["labels"]["slipway.dev/environment"] == "production"
    assert job["metadata"]["labels"]["app.kubernetes.io/name"] == "helmsman"
    assert job["metadata"]["annotations"]["slipway.dev/reason"] == "why"


def test_default_container_is_the_first():
    job = job_from_cronjob(CRONJOB, "run-3", env_vars={"DSS_FILE": "s.yaml"})
    assert job["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "DSS_FILE", "value": "s.yaml"}]


def test_missing_container_or_template_is_invalid():
    with pytest.raises(CronJobInvalid, match="no container named 'nope'"):
        job_from_cronjob(CRONJOB, "x", container="nope", env_vars={"A": "b"})
    with pytest.raises(CronJobInvalid, match="no containers"):
        job_from_cronjob({"metadata": {"name": "c"}, "spec": {}}, "x")


def test_job_names_are_unique_dns_labels():
    names = {job_name("helmsman-cronjob-production", clock=lambda: 1_800_000_000) for _ in range(50)}
    assert len(names) > 40
    long = job_name("x" * 80)
    assert len(long) <= 63 and long[0].isalnum() and long[-1].isalnum()


@pytest.mark.parametrize("status, pods, phase", [
    ({}, [], "pending"),
    ({"active": 1}, [{"status": {"phase": "Pending"}}], "pending"),
    ({"active": 1}, [{"status": {"phase": "Running"}}], "running"),
    ({"active": 1, "ready": 1}, [], "running"),
    ({"conditions": [{"type": "Complete", "status": "True"}]}, [], "succeeded"),
    # Kubernetes >= 1.31: interim conditions come first; the run ends with Complete/Failed.
    ({"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}], "active": 1}, [], "running"),
    ({"conditions": [{"type": "FailureTarget", "status": "True"}], "active": 1}, [], "running"),
    ({"conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                     {"type": "Complete", "status": "True"}]}, [], "succeeded"),
    ({"conditions": [{"type": "Failed", "status": "True"}]}, [], "failed"),
    ({"conditions": [{"type": "Failed", "status": "False"}], "active": 1}, [], "pending"),
])
def test_phase(status, pods, phase):
    job = {"metadata": {"name": "j"}, "status": status}
    assert job_phase(job, pods) == phase
    assert is_finished(job) == (phase in ("succeeded", "failed"))


def test_a_run_is_reported_ended_only_with_its_end_time():
    """The Job controller of Kubernetes 1.31+ sets ``SuccessCriteriaMet`` before the pods have
    terminated and ``Complete`` plus ``completionTime`` after; on a busy machine a reader sees
    the first without the second. Succeeded/failed must always come with ``finished_at``."""
    interim = {"metadata": {"name": "j"},
               "status": {"startTime": "2026-11-22T03:00:01Z", "active": 1,
                          "conditions": [{"type": "SuccessCriteriaMet", "status": "True",
                                          "lastTransitionTime": "2026-11-22T03:00:05Z"}]}}
    summary = job_summary(interim)
    assert (summary["phase"], summary["finished_at"]) == ("running", None)
    assert not is_finished(interim)
    done = copy.deepcopy(interim)
    done["status"].update(active=0, completionTime="2026-11-22T03:00:06Z")
    done["status"]["conditions"].append({"type": "Complete", "status": "True",
                                         "lastTransitionTime": "2026-11-22T03:00:06Z"})
    summary = job_summary(done)
    assert (summary["phase"], summary["finished_at"]) == ("succeeded", "2026-11-22T03:00:06Z")


def test_summary_times():
    job = {"metadata": {"name": "j", "creationTimestamp": "2026-11-22T03:00:00Z",
                        "labels": {"slipway.dev/environment": "staging"}},
           "status": {"startTime": "2026-11-22T03:00:01Z",
                      "conditions": [{"type": "Failed", "status": "True",
                                      "lastTransitionTime": "2026-11-22T03:00:09Z"}]}}
    s = job_summary(job)
    assert (s["environment"], s["phase"], s["started_at"], s["finished_at"]) == (
        "staging", "failed", "2026-11-22T03:00:01Z", "2026-11-22T03:00:09Z")


def test_config_validates_environments():
    with pytest.raises(ValueError):
        HelmApiConfig(environments={})
    with pytest.raises(ValueError):
        HelmApiConfig(environments={"staging": "../etc/passwd"})
    assert HelmApiConfig(environments={"qa": "qa.yaml"}).resolved_default_environment == "qa"
    assert HelmApiConfig().resolved_default_environment is None


def test_settings_from_environment(monkeypatch, tmp_path):
    from helm_api.config import load_settings
    from poller.errors import ConfigError

    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("HELM_API_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("HELM_API_NAMESPACE", "ci")
    monkeypatch.setenv("HELM_API_ENVIRONMENTS", '{"staging": "staging.yaml"}')
    cfg = load_settings()
    assert cfg.token.get_secret_value() == "from-file"
    assert (cfg.namespace, cfg.cronjob, cfg.environments) == ("ci", "helmsman-cronjob",
                                                              {"staging": "staging.yaml"})
    monkeypatch.setenv("HELM_API_NAMESPACE", "Not A Label")
    with pytest.raises(ConfigError, match="HELM_API_NAMESPACE"):
        load_settings()

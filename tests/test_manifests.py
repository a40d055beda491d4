"""Every Kubernetes manifest under deploy/ is valid, strictly (no unknown
field), against the schemas kubernetes-validate bundles: no network.

kubernetes-validate is in the `test` extra that setup installs: if it is
missing the setup is broken, and this fails rather than skips."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_there_are_manifests():
    assert {p.name for p in MANIFESTS} >= {"daemonset.yaml", "sidecar.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_kubernetes(path):
    out = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert "No module named kubernetes_validate" not in out.stderr, \
        "kubernetes-validate is missing: pip install -e '.[test]' (make setup does)"
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed" in out.stdout and "failed" not in out.stdout.lower(), out.stdout


def _container(text: str, name: str) -> str:
    """The text of one container of a manifest, up to the next one."""
    start = text.index(f"- name: {name}\n")
    nxt = re.search(r"\n\s+- name: ", text[start + 1:])
    return text[start:start + 1 + nxt.start()] if nxt else text[start:]


def _resources(block: str) -> tuple[str, str]:
    return (re.search(r"requests: \{([^}]*)\}", block).group(1), re.search(r"limits: \{([^}]*)\}", block).group(1))


@pytest.mark.parametrize("name", ["daemonset.yaml", "sidecar.yaml"])
def test_every_container_has_requests_equal_to_limits(name):
    # Guaranteed QoS: the killer is the last pod evicted, and a sidecar does
    # not take its pod out of the Guaranteed class
    text = (DEPLOY / "container" / name).read_text()
    blocks = [_container(text, n) for n in re.findall(r"\n\s+- name: ([\w-]+)\n\s+image:", text)]
    assert blocks
    for block in blocks:
        requests, limits = _resources(block)
        assert "cpu" in requests and "memory" in requests and requests == limits, block


def test_the_daemonset_runs_on_every_node_and_is_probed():
    text = (DEPLOY / "container" / "daemonset.yaml").read_text()
    assert re.search(r"tolerations:\n\s+- operator: Exists\n", text)
    assert "hostPID: true" in text
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert re.search(probe + r':\n\s+exec: \{command: \["oomkiller", "info", ', text), probe
    for host in ("/lib/modules", "/usr/src"):
        assert re.search(r"mountPath: " + host + r", readOnly: true", text), host
    assert re.search(r"\{name: cgroup, mountPath: /sys/fs/cgroup\}", text)    # read-write
    assert "--jobs" not in text             # the job rule knows pods with either driver


def test_the_sidecar_is_not_privileged():
    text = (DEPLOY / "container" / "sidecar.yaml").read_text()
    assert "privileged: true" not in text and "shareProcessNamespace: true" in text
    assert re.search(r'drop: \["ALL"\]', text) and "allowPrivilegeEscalation: false" in text

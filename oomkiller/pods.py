"""Who a Kubernetes pod job is: its UID from the kubelet's cgroup name, and
its namespace, name and containers from the container runtime's bundle.

The kubelet names a pod's cgroup after the pod's UID (systemd driver:
``kubepods-burstable-pod<uid with _ for ->.slice``; cgroupfs driver:
``pod<uid>``), and the runtime names each container's cgroup after the
container's id (``cri-containerd-<id>.scope``, ``crio-<id>.scope``,
``docker-<id>.scope``, or the bare id under the cgroupfs driver). The
runtime writes each container's OCI ``config.json`` under its state folder,
with the annotations the CRI puts there:

* containerd: ``/run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/``,
  ``io.kubernetes.cri.sandbox-namespace``, ``…sandbox-name``,
  ``…container-name``, ``…container-type`` (``sandbox`` for the pause
  container);
* CRI-O: ``/run/containers/storage/overlay-containers/<id>/userdata/``,
  ``io.kubernetes.pod.namespace``, ``io.kubernetes.pod.name``,
  ``io.kubernetes.container.name`` (``POD`` for the infra container).

Only root writes those folders; a file there is still read with a size
bound, only if root (or the daemon's own user) owns it, never through a
symlink, and an id must be 64 hex digits before it is
joined to a path. Whatever cannot be read leaves the name out, never the
job: the UID alone comes from the cgroup's name. Annotations do not change
while a container lives, so each container's are kept (a bounded cache)."""
from __future__ import annotations

import json
import os
import re
import threading

# <uid> of the kubelet's pod cgroup names; the systemd driver writes its
# dashes as underscores
_POD_NAME = re.compile(r"(?:kubepods(?:-besteffort|-burstable)?-pod([0-9a-fA-F_]{8,64})\.slice"
                       r"|pod([0-9a-fA-F-]{8,64}))")
_CONTAINER = re.compile(r"(?:(cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?")

# The runtimes' state folders, by how the container's cgroup is named
# (a bare id: either).
BUNDLES = {
    "cri-containerd": ("run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json",),
    "crio": ("run/containers/storage/overlay-containers/{id}/userdata/config.json",),
    "docker": ("run/containerd/io.containerd.runtime.v2.task/moby/{id}/config.json",),
    "": ("run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json",
         "run/containers/storage/overlay-containers/{id}/userdata/config.json"),
}
# (namespace, pod name, container name, is the pod's sandbox) keys by runtime
_KEYS = (
    ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.sandbox-name", "io.kubernetes.cri.container-name"),
    ("io.kubernetes.pod.namespace", "io.kubernetes.pod.name", "io.kubernetes.container.name"),
)
# An OCI config with its annotations is a few KiB to a few tens of KiB.
MAX_CONFIG_BYTES = 1 << 20
MAX_CACHED = 4096
# A pod shows this many containers by name, then how many more.
SHOWN_CONTAINERS = 8


def pod_uid(name: str) -> str | None:
    """The pod UID of a pod job, from its cgroup's own name (the last part
    of ``name``), None if it is not named like a kubelet's pod cgroup."""
    m = _POD_NAME.fullmatch(name.rsplit("/", 1)[-1])
    if not m:
        return None
    return m.group(1).replace("_", "-") if m.group(1) else m.group(2)


def container_id(name: str) -> tuple[str, str] | None:
    """(runtime prefix, id) of a container's cgroup name, None if it is not one."""
    m = _CONTAINER.fullmatch(name.rsplit("/", 1)[-1])
    return (m.group(1) or "", m.group(2)) if m else None


def _read_config(path: str) -> dict | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()) or not (st.st_mode & 0o170000 == 0o100000) \
                or st.st_size > MAX_CONFIG_BYTES:
            return None
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    ann = doc.get("annotations") if isinstance(doc, dict) else None
    return ann if isinstance(ann, dict) else None


def _text(v) -> str:
    return v[:253] if isinstance(v, str) else ""


class Pods:
    """Reads and keeps what the runtimes say of each container."""

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self._seen: dict[str, tuple[str, str, str, bool]] = {}
        self._lock = threading.Lock()

    def container(self, runtime: str, cid: str) -> tuple[str, str, str, bool] | None:
        """(namespace, pod name, container name, is the sandbox) of one
        container, None if no runtime says."""
        got = self._seen.get(cid)
        if got is not None:
            return got
        found = None
        for rel in BUNDLES.get(runtime, ()):
            ann = _read_config(os.path.join(self.root, rel.format(id=cid)))
            if ann is None:
                continue
            for ns_key, pod_key, ctr_key in _KEYS:
                if pod_key in ann:
                    ctr = _text(ann.get(ctr_key))
                    sandbox = ann.get("io.kubernetes.cri.container-type") == "sandbox" or ctr == "POD"
                    found = (_text(ann.get(ns_key)), _text(ann.get(pod_key)), ctr, sandbox)
                    break
            if found:
                break
        if found is not None:
            # not a miss: the runtime may write a new container's bundle later
            # the loop and the control thread's rank share it: one at a time
            with self._lock:
                if len(self._seen) >= MAX_CACHED:
                    self._seen.pop(next(iter(self._seen)))
                self._seen[cid] = found
        return found

    def describe(self, name: str, inner: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """Labels of a pod job (``name``, with the names of the cgroups
        below it, of which its children are its containers): ``pod_uid``, and where a runtime says, ``pod``
        (namespace/name) and ``containers`` (their names, comma-separated).
        Empty if ``name`` is not a pod's cgroup."""
        uid = pod_uid(name)
        if uid is None:
            return ()
        labels = [("pod_uid", uid)]
        pod = ""
        names: list[str] = []
        for sub in inner:
            # A container's cgroup is the pod's child. Deeper down, a
            # container that may write its own cgroup tree names cgroups
            # as it likes, another pod's container's id among them.
            if sub.rpartition("/")[0] != name:
                continue
            c = container_id(sub)
            if c is None:
                continue
            got = self.container(*c)
            if got is None:
                continue
            ns, pname, ctr, sandbox = got
            if ns and pname and not pod:
                pod = f"{ns}/{pname}"
            if ctr and not sandbox and ctr not in names:
                names.append(ctr)
        if pod:
            labels.append(("pod", pod))
        if names:
            more = len(names) - SHOWN_CONTAINERS
            labels.append(("containers", ",".join(names[:SHOWN_CONTAINERS]) + (f",+{more} more" if more > 0 else "")))
        return tuple(labels)

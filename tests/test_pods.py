"""Who a pod job is: its UID from the kubelet's cgroup name, its namespace,
name and containers from the runtime's bundle (containerd and CRI-O), in
``rank``, the decision record and the kill's log line."""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from oomkiller import report
from oomkiller.core.rank import Policy, rank
from oomkiller.model import KillResult
from oomkiller.pods import MAX_CONFIG_BYTES, Pods, container_id, pod_uid

from test_jobrule import DAEMON_PID, build

A = "a" * 64        # the web pod's pause container (containerd)
B = "b" * 64        # its nginx
C = "c" * 64        # its log shipper
D = "d" * 64        # a CRI-O pod's app
E = "e" * 64        # CRI-O's infra container
POD = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f1a2b3c_0000_4d5e_8f90_123456789abc.slice"
CRIO_POD = "kubepods/besteffort/pod0b1c2d3e-aaaa-bbbb-cccc-123456789abc"
SHAPE = {
    f"{POD}/cri-containerd-{A}.scope": {201: 1},
    f"{POD}/cri-containerd-{B}.scope": {202: 300},
    f"{POD}/cri-containerd-{C}.scope": {203: 40},
    f"{CRIO_POD}/{E}": {204: 1},
    f"{CRIO_POD}/{D}": {205: 700},
    "system.slice/kubelet.service": {206: 90},
}


def _containerd(root, cid, ctr, kind="container"):
    d = root / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / cid
    d.mkdir(parents=True)
    ann = {"io.kubernetes.cri.sandbox-namespace": "shop", "io.kubernetes.cri.sandbox-name": "web-7d9",
           "io.kubernetes.cri.container-type": kind}
    if ctr:
        ann["io.kubernetes.cri.container-name"] = ctr
    (d / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": ann}))


def _crio(root, cid, ctr):
    d = root / "run/containers/storage/overlay-containers" / cid / "userdata"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"annotations": {
        "io.kubernetes.pod.namespace": "batch", "io.kubernetes.pod.name": "report-x1",
        "io.kubernetes.container.name": ctr}}))


def _runtime(tmp_path):
    root = tmp_path / "runtime"
    _containerd(root, A, "", "sandbox")
    _containerd(root, B, "nginx")
    _containerd(root, C, "log")
    _crio(root, E, "POD")
    _crio(root, D, "report")
    return root


def test_names_of_the_kubelets_cgroups():
    assert pod_uid(POD) == "3f1a2b3c-0000-4d5e-8f90-123456789abc"
    assert pod_uid("kubepods.slice/kubepods-pod11aa_22bb.slice") == "11aa-22bb"
    assert pod_uid(CRIO_POD) == "0b1c2d3e-aaaa-bbbb-cccc-123456789abc"
    assert pod_uid("system.slice/nginx.service") is None
    assert container_id(f"cri-containerd-{A}.scope") == ("cri-containerd", A)
    assert container_id(f"crio-{D}.scope") == ("crio", D)
    assert container_id(D) == ("", D)
    assert container_id("cri-containerd-../../etc.scope") is None
    assert container_id("a1.scope") is None


def test_rank_record_and_log_line_say_which_pod_and_containers(tmp_path, proc_tree):
    fs = build(tmp_path, proc_tree, SHAPE)
    fs.pods = Pods(str(_runtime(tmp_path)))
    ranking = rank(fs.jobs(fs.resolve("host"), ("auto",), fs.keep_out((1, DAEMON_PID))),
                   Policy(self_pid=DAEMON_PID), 64 << 30)
    by = {c.job.name: c for c in ranking.candidates}
    web, rep = by[POD], by[CRIO_POD]
    assert dict(web.job.labels) == {"pod_uid": "3f1a2b3c-0000-4d5e-8f90-123456789abc", "pod": "shop/web-7d9",
                                    "containers": "nginx,log"}
    assert dict(rep.job.labels) == {"pod_uid": "0b1c2d3e-aaaa-bbbb-cccc-123456789abc", "pod": "batch/report-x1",
                                    "containers": "report"}
    assert by["system.slice/kubelet.service"].job.labels == ()
    text = report.format_ranking(ranking)
    assert "pod shop/web-7d9 (uid 3f1a2b3c-0000-4d5e-8f90-123456789abc), containers nginx,log" in text
    assert report.candidate_record(web)["labels"]["pod"] == "shop/web-7d9"
    assert "labels" not in report.candidate_record(by["system.slice/kubelet.service"])
    res = KillResult(web.job, ok=True, dry_run=False, method="cgroup.kill", signalled_pids=(202, 203),
                     signal_to_empty_usec=3_000)
    line = report.outcome_line(web, res, 12_000)
    assert line.startswith(f"OOM: killed job '{POD}' by cgroup.kill: 2 procs")
    assert line.endswith("; pod shop/web-7d9 (uid 3f1a2b3c-0000-4d5e-8f90-123456789abc), containers nginx,log")


def test_no_runtime_bundle_leaves_the_uid_alone(tmp_path, proc_tree):
    fs = build(tmp_path, proc_tree, SHAPE)
    fs.pods = Pods(str(tmp_path / "nothing"))
    jobs = {j.name: j for j in fs.jobs(fs.resolve("host"), ("auto",), fs.keep_out((1, DAEMON_PID)))}
    assert dict(jobs[POD].labels) == {"pod_uid": "3f1a2b3c-0000-4d5e-8f90-123456789abc"}


def test_a_pod_named_cgroup_below_a_users_app_gets_no_labels(tmp_path, proc_tree):
    fake = "user.slice/user-1000.slice/user@1000.service/app.slice/kubepods-burstable-pod1234abcd.slice"
    fs = build(tmp_path, proc_tree, {f"{fake}/cri-containerd-{B}.scope": {301: 50}})
    fs.pods = Pods(str(_runtime(tmp_path)))
    jobs = fs.jobs(fs.resolve("host"), ("auto",), fs.keep_out((1, DAEMON_PID)))
    assert jobs and all(j.labels == () for j in jobs)


def test_bad_bundles_are_ignored(tmp_path):
    root = tmp_path / "rt"
    base = root / "run/containerd/io.containerd.runtime.v2.task/k8s.io"
    for cid, body in ((A, "{not json"), (B, json.dumps([1, 2])), (C, json.dumps({"annotations": "x"})),
                      (D, "[" * 100_000)):
        (base / cid).mkdir(parents=True)
        (base / cid / "config.json").write_text(body)
    (base / E).mkdir(parents=True)
    big = base / E / "config.json"
    big.write_text(" " * (MAX_CONFIG_BYTES + 1))
    link = base / ("f" * 64)
    link.mkdir()
    os.symlink(base / B / "config.json", link / "config.json")
    pods = Pods(str(root))
    for cid in (A, B, C, D, E, "f" * 64):
        assert pods.container("cri-containerd", cid) is None


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=40), st.one_of(st.text(max_size=300), st.integers(), st.none(),
                                                        st.lists(st.text(max_size=5), max_size=3)), max_size=6))
def test_any_annotations_give_text_or_nothing(tmp_path_factory, ann):
    root = tmp_path_factory.mktemp("rt")
    d = root / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / A
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"annotations": ann}))
    got = Pods(str(root)).container("cri-containerd", A)
    assert got is None or (all(isinstance(x, str) and len(x) <= 253 for x in got[:3]) and isinstance(got[3], bool))


def test_burstable_pods_rank_by_how_far_usage_exceeds_requests(tmp_path, proc_tree):
    """The kubelet gives a Burstable container oom_score_adj 1000 - 1000 *
    request / capacity; the score adds adj * total / 1000, so on a node
    whose total is its capacity the score is usage - request + total: the
    pod furthest over its request ranks first, as the kubelet evicts, not
    the largest."""
    cap = 16 << 30
    big = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0001_0001.slice"
    over = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0002_0002.slice"
    fs = build(tmp_path, proc_tree, {f"{big}/cri-containerd-{B}.scope": {401: 1024},
                                     f"{over}/cri-containerd-{C}.scope": {402: 800}})
    for pid, request_mib in ((401, 900), (402, 100)):
        (proc_tree.root / str(pid) / "oom_score_adj").write_text(f"{1000 - 1000 * (request_mib << 20) // cap}\n")
    ranking = rank(fs.jobs(fs.resolve("host"), ("auto",), ()), Policy(self_pid=DAEMON_PID), cap)
    assert [c.job.name for c in ranking.candidates] == [over, big]
    # 700 MiB over its request against 124 MiB over, to one step of the
    # kubelet's integer adj (capacity / 1000) each
    assert ranking.candidates[0].score_bytes - ranking.candidates[1].score_bytes == \
        pytest.approx((700 - 124) << 20, abs=2 * cap // 1000)


def test_a_cgroup_named_after_another_pods_container_deep_in_a_pod_names_nothing(tmp_path, proc_tree):
    """A container that may write its own cgroup tree (privileged, or
    running systemd) makes cgroups below its own named after another pod's
    containers: only the pod's children are its containers, so its pod is
    not called the other pod and does not list the other's containers."""
    f = "f" * 64    # no bundle
    lone = "kubepods.slice/kubepods-pod99990000_1111.slice"
    fs = build(tmp_path, proc_tree, {
        **SHAPE,
        f"{CRIO_POD}/{D}/cri-containerd-{B}.scope": {210: 5},
        f"{lone}/cri-containerd-{f}.scope/cri-containerd-{A}.scope/cri-containerd-{C}.scope": {211: 5},
    })
    fs.pods = Pods(str(_runtime(tmp_path)))
    jobs = {j.name: j for j in fs.jobs(fs.resolve("host"), ("auto",), fs.keep_out((1, DAEMON_PID)))}
    assert dict(jobs[CRIO_POD].labels) == {"pod_uid": "0b1c2d3e-aaaa-bbbb-cccc-123456789abc",
                                           "pod": "batch/report-x1", "containers": "report"}
    assert dict(jobs[lone].labels) == {"pod_uid": "99990000-1111"}
    assert dict(jobs[POD].labels)["containers"] == "nginx,log"

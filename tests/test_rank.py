from oomkiller.model import Importance, Job, Proc
from oomkiller.core.rank import Policy, glob_match, rank, xattr_set

GiB = 1 << 30


def test_glob_match_right_anchored():
    assert glob_match("system.slice/foo.service", "*.service")
    assert glob_match("foo.service", "*.service")
    assert glob_match("system.slice/foo.service", "/system.slice/*")
    assert not glob_match("user.slice/system.slice/foo.service", "/system.slice/*")
    assert not glob_match("foo.scope", "*.service")


def test_xattr_set():
    assert xattr_set("1") and xattr_set(" yes\n")
    assert not xattr_set("") and not xattr_set("0") and not xattr_set(" 0\n")


def proc(pid, mb, adj=0, state="S", kernel=False):
    return Proc(pid=pid, name=f"p{pid}", committed_bytes=mb << 20, oom_score_adj=adj, state=state,
                start_ticks=pid * 7, kernel_thread=kernel)


def job(name, *procs, xattrs=(), inode=None, oom_group=False):
    return Job(name=name, path="/x/" + name, inode=inode or hash(name) % 90000 + 10, procs=procs,
               xattrs=xattrs, oom_group=oom_group)


def order(ranking):
    return [(c.job.name, c.killable) for c in ranking.candidates]


def test_memory_orders_within_a_class():
    r = rank([job("small", proc(10, 30)), job("big", proc(11, 300)), job("mid", proc(12, 90), proc(13, 90))],
             Policy(), 8 * GiB)
    assert order(r) == [("big", True), ("mid", True), ("small", True)]
    assert r.candidates[1].score_bytes == 180 << 20
    assert "committed 188743680 bytes in 2 procs" in r.candidates[1].reasons


def test_classes_from_globs_beat_xattrs_and_protect_wins():
    jobs = [job("a.service", proc(20, 500)),
            job("b.service", proc(21, 400), xattrs=(("user.oomd_prefer", "1"),)),
            job("c.scope", proc(22, 300), xattrs=(("user.oomd_avoid", "1"),)),
            job("d.scope", proc(23, 200), xattrs=(("user.oomd_omit", "1"),)),
            job("e.scope", proc(24, 100), xattrs=(("user.oomd_prefer", "1"),)),
            job("f.slice", proc(25, 50))]
    r = rank(jobs, Policy(protect=("a.*",), avoid=("e.*",), prefer=("f.*",)), 8 * GiB)
    assert order(r) == [("b.service", True), ("f.slice", True), ("c.scope", True), ("e.scope", True),
                        ("a.service", False), ("d.scope", False)]
    classes = {c.job.name: (c.importance, c.reasons[0]) for c in r.candidates}
    assert classes["a.service"] == (Importance.PROTECT, "protect: glob 'a.*'")
    assert classes["b.service"] == (Importance.PREFER, "prefer: xattr user.oomd_prefer")
    assert classes["d.scope"] == (Importance.PROTECT, "protect: xattr user.oomd_omit")
    assert classes["e.scope"] == (Importance.AVOID, "avoid: glob 'e.*'")


def test_skips_empty_unkillable_init_and_self():
    jobs = [job("empty"), job("pinned", proc(30, 900, adj=-1000)), job("zombie", proc(31, 0, state="Z")),
            job("init", proc(1, 50)), job("me", proc(4242, 60)), job("victim", proc(32, 10))]
    r = rank(jobs, Policy(self_pid=4242), 8 * GiB)
    assert [c.job.name for c in r.killable()] == ["victim"]
    why = {c.job.name: c.reasons for c in r.candidates}
    assert why["init"][0] == "holds PID 1" and why["me"][0] == "holds oomkiller itself"
    assert "empty" in why["empty"] and "no killable process" in why["pinned"]


def test_oom_score_adj_bias_like_the_kernel():
    r = rank([job("big", proc(40, 400)), job("adj", proc(41, 100, adj=500), proc(42, 5, adj=-1000))],
             Policy(), 1 * GiB)
    assert order(r)[0] == ("adj", True)
    top = r.candidates[0]
    assert top.score_bytes == (105 << 20) + 500 * GiB // 1000
    assert f"oom_score_adj +500: +{500 * GiB // 1000} bytes" in top.reasons


def test_oom_group_reason():
    r = rank([job("g", proc(50, 10), oom_group=True)], Policy(), GiB)
    assert "memory.oom.group: killed as one unit" in r.candidates[0].reasons


def test_a_protected_cgroup_inside_protects_the_job():
    inner_glob = Job(name="web", path="/x/web", inode=71, procs=(proc(60, 500),),
                     inner=(("web/db", ()), ("web/cache", ())))
    inner_xattr = Job(name="api", path="/x/api", inode=72, procs=(proc(61, 400),),
                      inner=(("api/keep", (("user.oomd_omit", "1"),)),))
    free = Job(name="batch", path="/x/batch", inode=73, procs=(proc(62, 10),), inner=(("batch/a", ()),))
    r = rank([inner_glob, inner_xattr, free], Policy(protect=("*/db",)), GiB)
    assert [c.job.name for c in r.killable()] == ["batch"]
    why = {c.job.name: c.reasons[0] for c in r.candidates}
    assert why["web"] == "holds protected 'web/db'"
    assert why["api"] == "holds protected 'api/keep' (xattr user.oomd_omit)"


def test_score_uses_the_cgroup_charge_when_known():
    shared = Job(name="pg", path="/x/pg", inode=80, charged_bytes=300 << 20,
                 procs=(proc(70, 250), proc(71, 250), proc(72, 250)))   # each maps the same shmem
    hog = Job(name="hog", path="/x/hog", inode=81, charged_bytes=500 << 20, procs=(proc(73, 500),))
    r = rank([shared, hog], Policy(), 8 * GiB)
    assert [c.job.name for c in r.candidates] == ["hog", "pg"]
    assert r.candidates[1].score_bytes == 300 << 20


def test_ignored_xattrs_are_named_in_the_reasons():
    note = "user.oomd_omit ignored: cgroup owned by uid 1000"
    r = rank([Job(name="u", path="/x/u", inode=90, procs=(proc(80, 10),), ignored_xattrs=(note,))], Policy(), GiB)
    (c,) = r.candidates
    assert c.killable and c.importance is Importance.NORMAL
    assert c.reasons[:2] == ("normal", note)


def test_a_protect_glob_below_counts_only_on_a_cgroup_root_made():
    """A user names the cgroups of their own subtree: ``mkdir sshd.service``
    there must not protect their job; one root made does."""
    pol = Policy(protect=("sshd.service",))
    user = Job(name="user-1000.slice", path="/x/u", inode=91, procs=(proc(81, 10),),
               user_inner=(("user-1000.slice/sshd.service", 65534), ("user-1000.slice/app", 65534)))
    root = Job(name="host.slice", path="/x/h", inode=92, procs=(proc(82, 10),),
               inner=(("host.slice/sshd.service", ()),))
    r = {c.job.name: c for c in rank([user, root], pol, GiB).candidates}
    assert r["user-1000.slice"].killable and r["user-1000.slice"].reasons[:2] == (
        "normal", "protect glob 'sshd.service' ignored below: cgroup 'user-1000.slice/sshd.service' owned by uid 65534")
    assert not r["host.slice"].killable and r["host.slice"].reasons[0] == "holds protected 'host.slice/sshd.service'"
    many = Job(name="u", path="/x/v", inode=93, procs=(proc(83, 10),),
               user_inner=tuple((f"u/{i}/sshd.service", 1000) for i in range(10)))
    (c,) = rank([many], pol, GiB).candidates
    assert len([x for x in c.reasons if "ignored below" in x]) == 3
    assert "and 7 more cgroups below matching a protect glob, not owned by root" in c.reasons


# -- the ranking a walk updates (rerank) -------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from oomkiller.core.rank import rerank  # noqa: E402

_JOB = st.builds(
    lambda n, mb, adj, kind, charged: Job(
        name=f"j{n}", path=f"/x/j{n}", inode=n + 10, v2_id=n + 10,
        procs=() if kind == "empty" else (Proc(n + 100, f"p{n}", mb << 20, -1000 if kind == "unkillable" else adj,
                                               "S", n),),
        xattrs=(("user.oomd_avoid", "1"),) if kind == "avoid" else (("user.oomd_omit", "1"),) if kind == "omit" else (),
        charged_bytes=charged << 20),
    st.integers(0, 40), st.integers(0, 64), st.sampled_from([0, 0, 500, -500]),
    st.sampled_from(["plain", "plain", "empty", "unkillable", "avoid", "omit"]), st.sampled_from([0, 0, 32]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_JOB, max_size=25, unique_by=lambda j: j.name), st.data())
def test_rerank_places_the_jobs_read_again_as_a_whole_ranking_would(jobs, data):
    """A walk reads a few jobs again and places only them again: the
    ranking it gets is the one ranking every job afresh would give, jobs
    dropped (gone) and jobs whose score moved up or down alike."""
    policy = Policy(prefer=("j1*",))
    before = rank(jobs, policy, 8 * GiB)
    assert [c.job for c in before.candidates] == [c.job for c in rank(list(reversed(jobs)), policy, 8 * GiB).candidates]
    changes, now = [], list(jobs)
    for old in data.draw(st.lists(st.sampled_from(jobs), unique=True, max_size=5)) if jobs else ():
        new = data.draw(st.one_of(st.none(), _JOB.map(lambda j, old=old: Job(
            name=old.name, path=old.path, inode=old.inode, v2_id=old.v2_id, procs=j.procs, xattrs=j.xattrs,
            charged_bytes=j.charged_bytes))))
        changes.append((old, new))
        at = next(i for i, j in enumerate(now) if j is old)
        if new is None:
            del now[at]
        else:
            now[at] = new
    after = rerank(before, changes, policy, 8 * GiB)
    whole = rank(now, policy, 8 * GiB)
    assert [c.job for c in after.candidates] == [c.job for c in whole.candidates]
    assert after.candidates == whole.candidates and after.keys == whole.keys
    assert after.top(2) == whole.killable()[:2] and tuple(after.walk()) == whole.killable()


def test_a_ranking_for_another_total_or_policy_is_ranked_again():
    a, b = job("a", proc(11, 10, adj=900)), job("b", proc(12, 100))
    small = rank([a, b], Policy(), 100 << 20)
    assert order(small) == [("b", True), ("a", True)]          # 10 + 90 MiB of bias ties b's 100: b's charge
    assert rank(small, Policy(), 100 << 20) is small
    big = rank(small, Policy(), 64 * GiB)
    assert order(big) == [("a", True), ("b", True)]            # 90% of 64 GiB
    assert order(rank(small, Policy(avoid=("a",)), 100 << 20)) == [("b", True), ("a", True)]
    c = job("c", proc(13, 5000))
    assert order(rerank(small, [(b, c)], Policy(avoid=("a",)), 100 << 20)) == [("c", True), ("a", True)]


def test_a_listings_ranking_takes_the_earlier_candidates_of_the_jobs_that_did_not_change(monkeypatch):
    import oomkiller.core.rank as rank_mod
    jobs = [job(f"j{i}", proc(i + 10, i)) for i in range(20)]
    first = rank(jobs, Policy(), 8 * GiB)
    made = []
    real = rank_mod.candidate
    monkeypatch.setattr(rank_mod, "candidate", lambda j, *a: made.append(j.name) or real(j, *a))
    grown = job("j3", proc(13, 500))
    second = rank([*jobs[:3], grown, *jobs[4:]], Policy(), 8 * GiB, prior=first)
    assert made == ["j3"] and second.candidates[0].job is grown
    rank(jobs, Policy(), 8 * GiB, prior=rank(jobs, Policy(), 4 * GiB))
    assert len(made) == 1 + 20 + 20      # a prior for another total is not taken


def test_the_jobs_an_event_names_are_found_by_cgroup_and_by_pid():
    a = Job(name="a", path="/x/a", inode=1, v2_id=77, procs=(proc(5, 10),))
    b = Job(name="b", path="/x/b", inode=2, procs=(proc(6, 90), proc(7, 1)))
    r = rank([a, b, job("c", proc(8, 50))], Policy(), 8 * GiB)
    assert r.jobs_named({77}, ()) == [a]
    assert r.jobs_named((), {7, 5}) == [b, a]         # in the walk's order
    assert r.jobs_named({78}, {9}) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(_JOB, max_size=25, unique_by=lambda j: j.name), st.data())
def test_the_walks_rival_is_the_largest_job_of_its_class_not_read_again(jobs, data):
    """The walk's check whether a job it did not read again may have grown
    past the top (``daemon._rival``) looks only from the start of the top's
    class in the ranking's keys: the same as the largest of every
    candidate of the class not read again, killable or empty."""
    from oomkiller.daemon import _rival
    policy = Policy(prefer=("j1*",))
    r = rank(jobs, policy, 8 * GiB)
    picks = data.draw(st.lists(st.sampled_from(jobs), unique=True, max_size=6)) if jobs else []
    changes = [(j, data.draw(st.one_of(st.none(), st.just(j)))) for j in picks]
    r = rerank(r, changes, policy, 8 * GiB)
    fresh = {id(n) for _, n in changes if n is not None}
    for imp in Importance:
        largest = max((c.score_bytes for c in r.candidates if id(c.job) not in fresh and c.importance is imp
                       and (c.killable or not c.job.procs)), default=0)
        assert _rival(r, imp, fresh) == largest
        unkeyed = type(r)(r.candidates)
        assert _rival(unkeyed, imp, fresh) == largest

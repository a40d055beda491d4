/* oomkiller: memory-pressure events from reclaim and OOM tracepoints (bcc).
 *
 * Only tracepoint arguments and helpers are used, never kernel structs, so the
 * program compiles against headers that do not match the running kernel.
 * bcc builds each tracepoint's `args` from its tracefs format file.
 *
 * Parameters come in as cflags from oomkiller/sources/bpf.py:
 *   STALL_THRESHOLD_NS  reclaim stall per cgroup per window that sends STALL
 *   WINDOW_NS           length of the stall-summing window
 *   QUIET_NS            no reclaim begin for this long: the next one is news
 *   RATE_LIMIT_NS       at most one event per cgroup per interval
 *   WITH_PREARM         compile the pre-armed kill (bpf_send_signal: Linux 5.3)
 *   ARM_MIN_RECLAIMED   an armed job's reclaim that got fewer pages back has failed
 *   ARM_FAILED_RECLAIMS this many failed reclaims in a row by one thread: the kill
 *   ARM_MAX_ORDER       larger allocations fall back rather than OOM: never kill for them
 *   ARM_RECLAIM_KIND    the reclaim that counts: OOMK_KIND_DIRECT_RECLAIM for a host
 *                       domain, OOMK_KIND_MEMCG_RECLAIM for a cgroup domain
 *   GFP_NO_OOM          gfp bits of allocations that fail instead of invoking the
 *                       OOM killer (__GFP_NORETRY | __GFP_RETRY_MAYFAIL on this kernel)
 *   EVENT_SIZE          sizeof the Python mirror of struct oom_event
 *   HAVE_TP_*           the tracepoint exists on this kernel
 *   MARK_VICTIM_RSS, MARK_VICTIM_COMM  oom:mark_victim carries sizes / comm (older kernels: pid only)
 *   DOMAIN_FILTER       the domain is a cgroup: events of tasks outside its v2
 *                       subtree (`domain_cg`, set from user space) are counted, not sent
 */
#include "oomkiller.h"

#if !defined(STALL_THRESHOLD_NS) || !defined(WINDOW_NS) || !defined(QUIET_NS) || \
    !defined(RATE_LIMIT_NS) || !defined(EVENT_SIZE)
#error "set STALL_THRESHOLD_NS, WINDOW_NS, QUIET_NS, RATE_LIMIT_NS and EVENT_SIZE with -D"
#endif
#if defined(WITH_PREARM) && (!defined(ARM_MIN_RECLAIMED) || !defined(ARM_FAILED_RECLAIMS) || \
    !defined(ARM_MAX_ORDER) || !defined(GFP_NO_OOM) || !defined(ARM_RECLAIM_KIND))
#error "WITH_PREARM needs ARM_MIN_RECLAIMED, ARM_FAILED_RECLAIMS, ARM_MAX_ORDER, ARM_RECLAIM_KIND and GFP_NO_OOM"
#endif

_Static_assert(sizeof(struct oom_event) == EVENT_SIZE,
	       "struct oom_event and its Python mirror differ in size");

struct cg_state {
	u64 window_start_ns;
	u64 stall_ns;           /* reclaim stall summed in the window */
	u64 reclaimed;          /* pages reclaimed in the window */
	u64 last_begin_ns;
	u64 last_emit_ns;
	u64 ends;               /* reclaim ends in the window */
};

struct reclaim_info {
	u64 ns;
	u64 gfp;
	s32 order;
	u32 pad;
};

BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(counters, u64, OOMK_COUNTERS);
BPF_TABLE("lru_hash", u32, struct reclaim_info, reclaim_start, 10240);   /* tid -> its reclaim */
#ifdef WITH_PREARM
BPF_ARRAY(armed, u64, 1);               /* cgroup v2 id of the armed job, 0: disarmed */
BPF_CGROUP_ARRAY(armed_cg, 1);          /* the armed job's v2 cgroup: its whole subtree is armed */
BPF_TABLE("lru_hash", u32, u32, failed_reclaims, 10240);    /* tid -> failed reclaims in a row */
#endif
BPF_TABLE("lru_hash", u64, struct cg_state, cgroups, 4096);  /* cgroup v2 id -> state */
#ifdef DOMAIN_FILTER
BPF_CGROUP_ARRAY(domain_cg, 1);         /* the domain's v2 cgroup */
#endif

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

/* Whether the current task's memory is the domain's business. Filtered here,
 * before any per-cgroup state is made or any event sent: reclaim elsewhere
 * on the machine must cost user space nothing and must not evict the
 * domain's cgroups from the `cgroups` table. Until user space has set
 * `domain_cg` (a negative answer), everything passes. */
static __always_inline int in_domain(void)
{
#ifdef DOMAIN_FILTER
	if (domain_cg.check_current_task(0) == 0) {
		count(OOMK_COUNTER_OUTSIDE);
		return 0;
	}
#endif
	return 1;
}

static __always_inline void fill(struct oom_event *ev, u32 kind, u64 cg, u64 now)
{
	u64 id = bpf_get_current_pid_tgid();

	__builtin_memset(ev, 0, sizeof(*ev));
	ev->kind = kind;
	ev->timestamp_ns = now;
	ev->cgroup_id = cg;
	ev->pid = id >> 32;
	ev->tid = (u32)id;
}

static __always_inline struct cg_state *state_of(u64 cg, u64 now, int *fresh)
{
	struct cg_state *st = cgroups.lookup(&cg);
	struct cg_state init = {};

	*fresh = 0;
	if (st)
		return st;
	init.window_start_ns = now;
	st = cgroups.lookup_or_try_init(&cg, &init);
	if (!st) {
		count(OOMK_COUNTER_STATE_FULL);
		return 0;
	}
	*fresh = 1;
	return st;
}

/* Two CPUs may both pass for one cgroup at the same instant: at worst one
 * extra event, which costs less than an atomic on every reclaim. */
static __always_inline int rate_ok(struct cg_state *st, u64 now)
{
	u64 last = st->last_emit_ns;

	if (last && now - last < RATE_LIMIT_NS) {
		count(OOMK_COUNTER_RATE_LIMITED);
		return 0;
	}
	st->last_emit_ns = now;
	return 1;
}

static __always_inline int reclaim_begin(void *ctx, u32 kind, int order, u64 gfp)
{
	u64 now = bpf_ktime_get_ns();
	u64 cg = bpf_get_current_cgroup_id();
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct oom_event ev;
	struct cg_state *st;
	int fresh;

	struct reclaim_info rb = {.ns = now, .gfp = gfp, .order = order};

	if (!in_domain())
		return 0;
	reclaim_start.update(&tid, &rb);
	st = state_of(cg, now, &fresh);
	if (!st)
		return 0;
	if (!fresh && now - st->last_begin_ns <= QUIET_NS) {
		st->last_begin_ns = now;
		return 0;
	}
	st->last_begin_ns = now;
	if (!rate_ok(st, now))
		return 0;
	fill(&ev, kind, cg, now);
	ev.order = order;
	ev.gfp_flags = gfp;
	bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
	events.perf_submit(ctx, &ev, sizeof(ev));
	return 0;
}

/* The pre-armed kill. While the domain is critical the core keeps its top
 * victim's cgroup in `armed_cg` (and its id in `armed`). A task anywhere in
 * that subtree whose reclaims keep failing (ARM_FAILED_RECLAIMS in a row, each
 * getting fewer than ARM_MIN_RECLAIMED pages back) is on its way to the OOM
 * killer: SIGKILL it now. A pending fatal signal makes the charge path bail
 * out (task_is_dying()) instead of invoking the OOM killer. Reclaim that makes
 * progress, allocations above ARM_MAX_ORDER and __GFP_NORETRY /
 * __GFP_RETRY_MAYFAIL ones (they fail rather than OOM) are left alone. */
static __always_inline int armed_kill(void *ctx, u32 kind, u32 tid, u64 cg, u64 now,
				      struct reclaim_info *rb, u64 nr_reclaimed)
{
#ifdef WITH_PREARM
	u32 zero = 0, one = 1;
	u64 *victim = armed.lookup(&zero);
	u32 *fails;
	struct oom_event ev;
	long rc;

	u64 armed_id;

	/* Only the domain's own shortage counts: a job reclaiming against a
	 * limit of its own inside the domain is the kernel's business there. */
	if (kind != ARM_RECLAIM_KIND || !victim || !*victim || !rb)
		return 0;
	armed_id = *victim;
	if (armed_cg.check_current_task(0) != 1)
		return 0;
	if (nr_reclaimed >= ARM_MIN_RECLAIMED) {
		failed_reclaims.delete(&tid);
		return 0;
	}
	if (rb->order > ARM_MAX_ORDER || (rb->gfp & GFP_NO_OOM))
		return 0;
	fails = failed_reclaims.lookup(&tid);
	if (!fails) {
		failed_reclaims.update(&tid, &one);
		if (ARM_FAILED_RECLAIMS > 1)
			return 0;
	} else if (++(*fails) < ARM_FAILED_RECLAIMS) {
		return 0;
	}
	failed_reclaims.delete(&tid);
	/* One shot: the core finishes the job and re-arms whom it chooses next.
	 * The dying task may fail more reclaims on its way out; no second event. */
	*victim = 0;
	rc = bpf_send_signal(9);
	if (rc)
		count(OOMK_COUNTER_SIGNAL_FAILED);
	fill(&ev, OOMK_KIND_ARMED_KILL, cg, now);
	ev.val[0] = nr_reclaimed;
	ev.val[1] = armed_id;
	ev.gfp_flags = rb->gfp;
	ev.order = rb->order;
	ev.arg[0] = kind;
	ev.arg[1] = rc;
	bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
	events.perf_submit(ctx, &ev, sizeof(ev));
	return 1;
#else
	return 0;
#endif
}

static __always_inline int reclaim_end(void *ctx, u32 kind, u64 nr_reclaimed)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct reclaim_info *begin = reclaim_start.lookup(&tid);
	u64 now = bpf_ktime_get_ns();
	u64 cg = bpf_get_current_cgroup_id();
	u64 stall;
	struct oom_event ev;
	struct cg_state *st;

	if (armed_kill(ctx, kind, tid, cg, now, begin, nr_reclaimed)) {
		if (begin)
			reclaim_start.delete(&tid);
		return 0;
	}
	if (!begin)
		return 0;
	stall = now - begin->ns;
	reclaim_start.delete(&tid);
	st = cgroups.lookup(&cg);
	if (!st)
		return 0;
	if (now - st->window_start_ns > WINDOW_NS) {
		st->window_start_ns = now;
		st->stall_ns = 0;
		st->reclaimed = 0;
		st->ends = 0;
	}
	__sync_fetch_and_add(&st->stall_ns, stall);
	__sync_fetch_and_add(&st->reclaimed, nr_reclaimed);
	__sync_fetch_and_add(&st->ends, 1);
	if (st->stall_ns < STALL_THRESHOLD_NS || !rate_ok(st, now))
		return 0;
	fill(&ev, OOMK_KIND_STALL, cg, now);
	ev.stall_ns = st->stall_ns;
	ev.val[0] = st->reclaimed;
	ev.val[1] = now - st->window_start_ns;
	ev.arg[0] = kind;
	ev.arg[1] = st->ends;
	bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
	/* A new window: the next STALL needs a threshold's worth of new stall. */
	st->window_start_ns = now;
	st->stall_ns = 0;
	st->reclaimed = 0;
	st->ends = 0;
	events.perf_submit(ctx, &ev, sizeof(ev));
	return 0;
}

/* An allocator event with no reclaim stall to sum: rate limit, then send. */
static __always_inline int pressure(struct oom_event *ev, u32 kind)
{
	u64 now = bpf_ktime_get_ns();
	u64 cg = bpf_get_current_cgroup_id();
	struct cg_state *st;
	int fresh;

	if (!in_domain())
		return 0;
	st = state_of(cg, now, &fresh);
	if (!st || !rate_ok(st, now))
		return 0;
	fill(ev, kind, cg, now);
	bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
	return 1;
}

#ifdef HAVE_TP_MEMCG_RECLAIM
TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_begin)
{
	return reclaim_begin(args, OOMK_KIND_MEMCG_RECLAIM, args->order, args->gfp_flags);
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_end)
{
	return reclaim_end(args, OOMK_KIND_MEMCG_RECLAIM, args->nr_reclaimed);
}
#endif

#ifdef HAVE_TP_DIRECT_RECLAIM
TRACEPOINT_PROBE(vmscan, mm_vmscan_direct_reclaim_begin)
{
	return reclaim_begin(args, OOMK_KIND_DIRECT_RECLAIM, args->order, args->gfp_flags);
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_direct_reclaim_end)
{
	return reclaim_end(args, OOMK_KIND_DIRECT_RECLAIM, args->nr_reclaimed);
}
#endif

#ifdef HAVE_TP_WAKEUP_KSWAPD
TRACEPOINT_PROBE(vmscan, mm_vmscan_wakeup_kswapd)
{
	struct oom_event ev;

	if (!pressure(&ev, OOMK_KIND_KSWAPD))
		return 0;
	ev.order = args->order;
	ev.gfp_flags = args->gfp_flags;
	ev.arg[0] = args->nid;
	ev.arg[1] = args->zid;
	events.perf_submit(args, &ev, sizeof(ev));
	return 0;
}
#endif

#ifdef HAVE_TP_RECLAIM_RETRY_ZONE
TRACEPOINT_PROBE(oom, reclaim_retry_zone)
{
	struct oom_event ev;

	if (!pressure(&ev, OOMK_KIND_RECLAIM_RETRY))
		return 0;
	ev.order = args->order;
	ev.val[0] = args->reclaimable;
	ev.val[1] = args->available;
	ev.val[2] = args->min_wmark;
	ev.arg[0] = args->node;
	ev.arg[1] = args->zone_idx;
	ev.arg[2] = args->no_progress_loops;
	ev.arg[3] = args->wmark_check;
	events.perf_submit(args, &ev, sizeof(ev));
	return 0;
}
#endif

#ifdef HAVE_TP_COMPACT_RETRY
TRACEPOINT_PROBE(oom, compact_retry)
{
	struct oom_event ev;

	if (!pressure(&ev, OOMK_KIND_COMPACT_RETRY))
		return 0;
	ev.order = args->order;
	ev.val[0] = args->ret;
	ev.arg[0] = args->priority;
	ev.arg[1] = args->result;
	ev.arg[2] = args->retries;
	ev.arg[3] = args->max_retries;
	events.perf_submit(args, &ev, sizeof(ev));
	return 0;
}
#endif

#ifdef HAVE_TP_MARK_VICTIM
/* The kernel's OOM killer chose a victim: a race we lost. Never rate limited. */
TRACEPOINT_PROBE(oom, mark_victim)
{
	struct oom_event ev;

	fill(&ev, OOMK_KIND_KERNEL_OOM_VICTIM, bpf_get_current_cgroup_id(), bpf_ktime_get_ns());
	ev.arg[0] = ev.pid;
	ev.pid = args->pid;
#ifdef MARK_VICTIM_RSS
	ev.val[0] = args->anon_rss;
	ev.val[1] = args->file_rss;
	ev.val[2] = args->shmem_rss;
	ev.val[3] = args->total_vm;
	ev.val[4] = args->pgtables;
	ev.arg[1] = args->uid;
	ev.arg[2] = args->oom_score_adj;
#endif
#ifdef MARK_VICTIM_COMM
	TP_DATA_LOC_READ_CONST(&ev.comm, comm, sizeof(ev.comm));
#endif
	events.perf_submit(args, &ev, sizeof(ev));
	return 0;
}
#endif

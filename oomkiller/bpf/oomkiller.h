/* The one event the BPF program sends to user space.
 *
 * Mirrored field for field by oomkiller/sources/bpf.py (class Event); a test
 * compiles static asserts generated from the Python side against this header,
 * and the program itself asserts sizeof(struct oom_event) == EVENT_SIZE, a
 * cflag set from the Python mirror, so a drifted layout fails to compile.
 *
 * Kind-specific fields (val[] are counts, arg[] small numbers):
 *
 *   kind                 order  gfp  stall  val[]                          arg[]
 *   MEMCG_RECLAIM         yes   yes   -     -                              -
 *   DIRECT_RECLAIM        yes   yes   -     -                              -
 *   STALL                 -     -     yes   0 nr_reclaimed in window       0 reclaim kind that crossed
 *                                           1 window length so far, ns     1 reclaim ends in window
 *   KSWAPD                yes   yes   -     -                              0 nid, 1 zid
 *   RECLAIM_RETRY         yes   -     -     0 reclaimable, 1 available,    0 node, 1 zone_idx,
 *                                           2 min_wmark (pages)            2 no_progress_loops, 3 wmark_check
 *   COMPACT_RETRY         yes   -     -     0 ret                          0 priority, 1 result,
 *                                                                          2 retries, 3 max_retries
 *   KERNEL_OOM_VICTIM     -     -     -     0 anon_rss, 1 file_rss,        0 tgid of the task that ran the
 *                                           2 shmem_rss, 3 total_vm,       OOM killer, 1 uid, 2 oom_score_adj
 *                                           4 pgtables (all in kB, as the
 *                                           tracepoint gives them)
 *   ARMED_KILL            yes   yes   -     0 nr_reclaimed by the failed   0 reclaim kind, 1 bpf_send_signal()
 *                                           reclaim (pages), 1 the armed   return code
 *                                           cgroup id (cgroup_id is the
 *                                           task's own, maybe below it)
 *
 * For KERNEL_OOM_VICTIM, pid and comm are the victim's (comm only on kernels
 * whose oom:mark_victim carries it); cgroup_id and tid are the current task's.
 */
#ifndef OOMKILLER_H
#define OOMKILLER_H

#define OOMK_KIND_MEMCG_RECLAIM     1
#define OOMK_KIND_DIRECT_RECLAIM    2
#define OOMK_KIND_STALL             3
#define OOMK_KIND_KSWAPD            4
#define OOMK_KIND_RECLAIM_RETRY     5
#define OOMK_KIND_COMPACT_RETRY     6
#define OOMK_KIND_KERNEL_OOM_VICTIM 7
#define OOMK_KIND_ARMED_KILL        8

/* Indexes of the per-cpu counters array. */
#define OOMK_COUNTER_RATE_LIMITED   0   /* events not sent: the cgroup's rate limit */
#define OOMK_COUNTER_SIGNAL_FAILED  1   /* bpf_send_signal() returned an error */
#define OOMK_COUNTER_STATE_FULL     2   /* no per-cgroup state could be made */
#define OOMK_COUNTER_OUTSIDE        3   /* events of tasks outside the domain, not sent */
#define OOMK_COUNTERS               4

#define OOMK_COMM_LEN 16

struct oom_event {
	__u64 timestamp_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cgroup_id;        /* cgroup v2 id of the current task */
	__u64 stall_ns;
	__u64 gfp_flags;
	__u64 val[5];
	__u32 kind;
	__u32 pid;              /* tgid of the current task (KERNEL_OOM_VICTIM: the victim) */
	__u32 tid;
	__s32 order;
	__s32 arg[4];
	char comm[OOMK_COMM_LEN];
};

#endif

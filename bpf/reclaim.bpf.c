/*
 * Memory-cgroup reclaim (memory.high throttling, charges near memory.max) in watched cgroups.
 * Aggregated per cgroup in the kernel; at most one event per cgroup per interval reaches user space.
 */

#define RECLAIM_EVENT_INTERVAL_NS 100000000ULL

struct reclaim_totals {
    u64 count;
    u64 duration_ns;
    u64 reclaimed_pages;
    u64 last_event_ns;
};

BPF_HASH(reclaim_started, u32, u64, MAX_TRACKED_PROCESSES);
BPF_HASH(reclaim_totals, u64, struct reclaim_totals, MAX_WATCHED_CGROUPS);

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_begin)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!find_watch(cgroup_id))
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    u64 now = bpf_ktime_get_ns();
    reclaim_started.update(&tid, &now);
    return 0;
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_end)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!find_watch(cgroup_id))
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    u64 *started = reclaim_started.lookup(&tid);
    if (!started)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 duration = now - *started;
    reclaim_started.delete(&tid);
    struct reclaim_totals zero = {};
    struct reclaim_totals *totals = reclaim_totals.lookup_or_try_init(&cgroup_id, &zero);
    if (!totals)
        return 0;
    u64 reclaimed = args->nr_reclaimed;
    u64 count = __sync_fetch_and_add(&totals->count, 1) + 1;
    u64 total_ns = __sync_fetch_and_add(&totals->duration_ns, duration) + duration;
    __sync_fetch_and_add(&totals->reclaimed_pages, reclaimed);
    u64 last = totals->last_event_ns;
    if (now - last < RECLAIM_EVENT_INTERVAL_NS)
        return 0;
    if (__sync_lock_test_and_set(&totals->last_event_ns, now) != last)
        return 0; /* another CPU reported this interval */
    struct event *event = reserve_event(EVENT_RECLAIM, cgroup_id, sizeof(struct event));
    if (!event)
        return 0;
    event->value0 = reclaimed;
    event->value1 = duration;
    event->value2 = count;
    event->value3 = total_ns;
    events.ringbuf_submit(event, 0);
    return 0;
}

/* OOM kills of processes in watched cgroups (oom:mark_victim), attributed to the victim's cgroup. */

TRACEPOINT_PROBE(oom, mark_victim)
{
    u32 victim = args->pid;
    struct process_info *known = find_process(victim);
    u64 cgroup_id;
    if (known) {
        cgroup_id = known->cgroup_id;
    } else {
        /* Not seen before: a memcg OOM runs in the context of a task charging that cgroup. */
        cgroup_id = bpf_get_current_cgroup_id();
        if (!find_watch(cgroup_id))
            return 0;
    }
    struct event *event = reserve_event(EVENT_OOM, cgroup_id, sizeof(struct event));
    if (!event)
        return 0;
    event->pid = victim;
    event->tgid = victim;
    TP_DATA_LOC_READ_STR(event->comm, comm, sizeof(event->comm));
    event->value0 = (args->anon_rss + args->file_rss + args->shmem_rss) * 1024; /* kB in the tracepoint */
    events.ringbuf_submit(event, 0);
    return 0;
}

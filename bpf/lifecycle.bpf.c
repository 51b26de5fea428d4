/* Process lifecycle in watched cgroups: new processes, execs, exits with their wait status. */

#define CLONE_THREAD_FLAG 0x00010000
#define SIGCHLD_NR 17
#define SIGCONT_NR 18
#define SIGSTOP_NR 19
#define SIGTTOU_NR 22
#define SIGURG_NR 23
#define SIGWINCH_NR 28

/* task_newtask rather than sched_process_fork: it carries clone_flags, so threads can be skipped. */
TRACEPOINT_PROBE(task, task_newtask)
{
    if (args->clone_flags & CLONE_THREAD_FLAG)
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!watched_cgroups.lookup(&cgroup_id))
        return 0;
    u32 child = args->pid;
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    track_process(child, parent, cgroup_id, WAIT_STATUS_UNKNOWN);
    struct event *event = reserve_event(EVENT_FORK, cgroup_id, sizeof(struct event));
    if (!event)
        return 0;
    event->ppid = parent;
    event->pid = child;
    event->tgid = child;
    events.ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!watched_cgroups.lookup(&cgroup_id))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 ppid = 0;
    struct process_info *known = find_process(tgid);
    if (known) {
        known->cgroup_id = cgroup_id;
        ppid = known->ppid;
    } else {
        /* A process attached to the cgroup from outside is tracked from its first exec on. */
        track_process(tgid, 0, cgroup_id, WAIT_STATUS_UNKNOWN);
    }
    struct path_event *event = reserve_event(EVENT_EXEC, cgroup_id, sizeof(struct path_event));
    if (!event)
        return 0;
    event->header.ppid = ppid;
    /* Zero-fills the path when the read fails; the decoder stops at the first NUL. */
    TP_DATA_LOC_READ_STR(event->path, filename, sizeof(event->path));
    events.ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    return 0;
}

/*
 * Runs for every process on the host: the tracked-process lookup is the filter, and it also
 * removes the entry of a process whose cgroup stopped being watched while it ran.
 */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if ((u32)pid_tgid != tgid)
        return 0; /* a thread other than the leader: the process lives on */
    struct process_info *known = find_process(tgid);
    if (!known)
        return 0;
    u32 ppid = known->ppid;
    s64 wait_status = known->wait_status;
    forget_process(tgid);
    if (!event_is_wanted(EVENT_EXIT))
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!watched_cgroups.lookup(&cgroup_id))
        return 0;
    struct event *event = reserve_event(EVENT_EXIT, cgroup_id, sizeof(struct event));
    if (!event)
        return 0;
    event->ppid = ppid;
    event->value0 = wait_status;
    events.ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    return 0;
}

/*
 * The first exit reason seen wins: exit_group before the SIGKILL it sends the other threads.
 * A process tracked in its array slot is recorded without the watched-cgroup lookup (the cheapest
 * test first); the cgroup is checked only for processes not found there.
 */
static __always_inline void record_wait_status(s32 wait_status)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct process_info *known = find_process_slot(tgid);
    if (!known) {
        u64 cgroup_id = bpf_get_current_cgroup_id();
        if (!watched_cgroups.lookup(&cgroup_id))
            return;
        known = process_overflow.lookup(&tgid);
        if (!known) {
            /* Not seen at fork or exec (in the cgroup before it was watched): tracked from here. */
            track_process(tgid, 0, cgroup_id, wait_status);
            return;
        }
    }
    if (known->wait_status == WAIT_STATUS_UNKNOWN)
        known->wait_status = wait_status;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
    record_wait_status((args->error_code & 0xff) << 8);
    return 0;
}

/* A signal whose default action ends the process, delivered with that default action. */
TRACEPOINT_PROBE(signal, signal_deliver)
{
    int sig = args->sig;
    if (args->sa_handler != 0 /* SIG_DFL */)
        return 0;
    if (sig == SIGCHLD_NR || sig == SIGURG_NR || sig == SIGWINCH_NR || (sig >= SIGCONT_NR && sig <= SIGTTOU_NR))
        return 0;
    record_wait_status(sig);
    return 0;
}

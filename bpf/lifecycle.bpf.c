/* Process lifecycle in watched cgroups: new processes, execs, exits with their wait status. */

#define CLONE_THREAD_FLAG 0x00010000
#define SIGCHLD_NR 17
#define SIGCONT_NR 18
#define SIGSTOP_NR 19
#define SIGTTOU_NR 22
#define SIGURG_NR 23
#define SIGWINCH_NR 28

/* Wait status of exiting processes (as waitpid reports it): the first exit reason seen wins. */
BPF_TABLE("lru_hash", u32, s64, exit_statuses, MAX_TRACKED_PROCESSES);

/* task_newtask rather than sched_process_fork: it carries clone_flags, so threads can be skipped. */
TRACEPOINT_PROBE(task, task_newtask)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!watched_cgroups.lookup(&cgroup_id))
        return 0;
    if (args->clone_flags & CLONE_THREAD_FLAG)
        return 0;
    u32 child = args->pid;
    struct process_info info = {.ppid = bpf_get_current_pid_tgid() >> 32, .cgroup_id = cgroup_id};
    tracked_processes.update(&child, &info);
    struct event *event = reserve_event(EVENT_FORK, cgroup_id);
    if (!event)
        return 0;
    event->ppid = info.ppid;
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
    struct process_info *known = tracked_processes.lookup(&tgid);
    struct process_info info = {.ppid = known ? known->ppid : 0, .cgroup_id = cgroup_id};
    /* A process attached to the cgroup from outside is tracked from its first exec on. */
    tracked_processes.update(&tgid, &info);
    struct event *event = reserve_event(EVENT_EXEC, cgroup_id);
    if (!event)
        return 0;
    event->ppid = info.ppid;
    TP_DATA_LOC_READ_STR(event->path, filename, sizeof(event->path));
    events.ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!watched_cgroups.lookup(&cgroup_id))
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if ((u32)pid_tgid != tgid)
        return 0; /* a thread other than the leader: the process lives on */
    struct process_info *known = tracked_processes.lookup(&tgid);
    u64 ppid = known ? known->ppid : 0;
    s64 *status = exit_statuses.lookup(&tgid);
    s64 wait_status = status ? *status : -1;
    tracked_processes.delete(&tgid);
    exit_statuses.delete(&tgid);
    struct event *event = reserve_event(EVENT_EXIT, cgroup_id);
    if (!event)
        return 0;
    event->ppid = ppid;
    event->value0 = wait_status;
    events.ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!watched_cgroups.lookup(&cgroup_id))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    s64 wait_status = (args->error_code & 0xff) << 8;
    exit_statuses.insert(&tgid, &wait_status);
    return 0;
}

/* A signal whose default action ends the process, delivered with that default action. */
TRACEPOINT_PROBE(signal, signal_deliver)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!watched_cgroups.lookup(&cgroup_id))
        return 0;
    int sig = args->sig;
    if (args->sa_handler != 0 /* SIG_DFL */)
        return 0;
    if (sig == SIGCHLD_NR || sig == SIGURG_NR || sig == SIGWINCH_NR || (sig >= SIGCONT_NR && sig <= SIGTTOU_NR))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    s64 wait_status = sig;
    exit_statuses.insert(&tgid, &wait_status);
    return 0;
}

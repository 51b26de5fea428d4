/*
 * Definitions shared by every hostwarden program. The loader prepends this unit to the program
 * units and compiles them as one bcc module, so all programs share these maps.
 *
 * Only tracepoint arguments, BPF helpers and BTF-typed pointers are read: the development hosts
 * compile against kernel headers that do not match the running kernel, so no struct offsets
 * from the headers may be trusted.
 */

#define EVENT_FORK 1
#define EVENT_EXEC 2
#define EVENT_EXIT 3
#define EVENT_SPIKE 4
#define EVENT_OOM 5
#define EVENT_RECLAIM 6
#define EVENT_EXEC_DIGEST 7
#define EVENT_KIND_SLOTS 8

#define MAX_WATCHED_CGROUPS 16384
#define MAX_TRACKED_PROCESSES 65536

/* Written by user space only, except spike_fired, which the kernel sets when it reports a crossing. */
struct watch_config {
    u64 spike_threshold;  /* bytes of summed process RSS; 0: no spike detection */
    u64 spike_fired;      /* 1 once a crossing was reported; user space re-arms by rewriting the entry */
};

/* One layout for every event keeps the ring buffer and its decoder simple (see events.py). */
struct event {
    u32 kind;
    u32 pid;
    u32 ppid;
    u32 tgid;
    u64 cgroup_id;
    u64 ktime_ns;     /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
    s64 value0;
    s64 value1;
    s64 value2;
    s64 value3;
    char comm[16];
    u8 digest[64];
    char path[256];
};

struct process_info {
    u64 ppid;
    u64 cgroup_id;
};

/* The first filter of every program: is the current task's cgroup one the daemon watches? */
BPF_HASH(watched_cgroups, u64, struct watch_config, MAX_WATCHED_CGROUPS);
/*
 * Lifecycle and exec events are submitted with BPF_RB_NO_WAKEUP and collected by user space's
 * periodic drain: waking the reader costs an interrupt per event (about 20 us inside a VM, where
 * a self-IPI exits to the hypervisor). Threshold crossings, OOM kills and reclaim wake it at once.
 */
BPF_RINGBUF_OUTPUT(events, 256);
/* Event kinds user space asked for (1): the others are not sent (their programs still keep their maps). */
BPF_ARRAY(event_wanted, u32, EVENT_KIND_SLOTS);
/* Ring buffer reservations that failed, per event kind: user space sums them as lost events. */
BPF_PERCPU_ARRAY(events_lost, u64, EVENT_KIND_SLOTS);
/* Processes of watched cgroups, by tgid: parent and cgroup for exec, exit and OOM attribution. */
BPF_TABLE("lru_hash", u32, struct process_info, tracked_processes, MAX_TRACKED_PROCESSES);

static __always_inline struct event *reserve_event(u32 kind, u64 cgroup_id)
{
    u32 slot = kind;
    u32 *wanted = event_wanted.lookup(&slot);
    if (!wanted || !*wanted)
        return 0;
    struct event *event = events.ringbuf_reserve(sizeof(struct event));
    if (!event) {
        u64 *lost = events_lost.lookup(&slot);
        if (lost)
            (*lost)++;
        return 0;
    }
    __builtin_memset(event, 0, sizeof(*event));
    u64 pid_tgid = bpf_get_current_pid_tgid();
    event->kind = kind;
    event->pid = (u32)pid_tgid;
    event->tgid = pid_tgid >> 32;
    event->cgroup_id = cgroup_id;
    event->ktime_ns = bpf_ktime_get_ns();
    bpf_get_current_comm(&event->comm, sizeof(event->comm));
    return event;
}

/*
 * Definitions shared by every hostwarden program. The loader prepends this unit (and rss.bpf.c) to the
 * program units and compiles them as one bcc module, so all programs share these maps.
 *
 * No struct offsets from kernel headers are trusted: the development hosts compile against headers that
 * do not match the running kernel. Programs read tracepoint arguments, BPF helpers, BTF-typed pointers,
 * and kernel structs at offsets the loader took from the running kernel's BTF (btf.py; KERNEL_LAYOUT
 * and the offsets are defined then, and not where the kernel has no BTF).
 *
 * Cost: every program runs on host-wide hot paths (each fork, exec, exit, context switch), so each
 * one filters first (watched cgroup, event kind wanted) and does no other work for what it drops.
 */

#define EVENT_FORK 1
#define EVENT_EXEC 2
#define EVENT_EXIT 3
#define EVENT_SPIKE 4
#define EVENT_OOM 5
#define EVENT_RECLAIM 6
#define EVENT_EXEC_DIGEST 7
#define EVENT_KIND_SLOTS 8

#ifndef MAX_WATCHED_CGROUPS  /* a test defines a smaller table to exercise reuse */
#define MAX_WATCHED_CGROUPS 16384
#endif
#define MAX_TRACKED_PROCESSES 65536  /* mm_overflow and reclaim_started entries */

#define EVENT_PATH_SIZE 256
#define EVENT_DIGEST_SIZE 64

/* Written by user space only. */
struct watch_config {
    u64 watch_serial;     /* a new one at every watch(): exec deduplication's entries belong to one watch */
    u64 memory_ref;       /* the cgroup's entries in cgroup_memory and cgroup_spike (rss.bpf.c) */
};

/*
 * Every ring-buffer record starts with this header; fork, exit, spike, OOM and reclaim records are
 * only the header. Exec records add a path, exec-digest records a digest and a path: reserving
 * (and filling) 400 bytes for an 80-byte event showed in the per-run cost. events.py decodes them.
 */
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
};

struct path_event {
    struct event header;
    char path[EVENT_PATH_SIZE];
};

struct digest_event {
    struct event header;
    u8 digest[EVENT_DIGEST_SIZE];
    char path[EVENT_PATH_SIZE];
};

/* The decoder (events.py) relies on these sizes. */
_Static_assert(sizeof(struct event) == 80, "struct event layout changed: update events.py");
_Static_assert(sizeof(struct path_event) == 80 + EVENT_PATH_SIZE, "struct path_event layout changed");
_Static_assert(sizeof(struct digest_event) == 80 + EVENT_DIGEST_SIZE + EVENT_PATH_SIZE,
               "struct digest_event layout changed");

#define WAIT_STATUS_UNKNOWN (-1)

/* A process of a watched cgroup: for exec, exit and OOM attribution. */
struct process_info {
    u32 tgid;         /* in process_slots: 0 marks a free slot */
    u32 ppid;         /* 0: unknown (the process entered the cgroup from outside) */
    u64 cgroup_id;
    u64 rss;          /* sampled RSS (rss.bpf.c): the bytes counted for it in the cgroup of memory_ref */
    u64 memory_ref;   /* the watch_config.memory_ref of the cgroup it was first tracked in */
};  /* 32 bytes: two per cache line, none across two */

/*
 * The first filter of every program: is the current task's cgroup one the daemon watches? Written by user
 * space only (monitor.py). A watched cgroup is in the array slot its id hashes to (plain memory, an inlined
 * lookup), or in the overflow hash when another watched cgroup holds that slot; while the overflow is empty
 * (overflow_count(OVERFLOW_WATCHES)) a cgroup not in its slot is not watched. The hash lookup this replaced
 * cost about 100 ns of a fork program's 330 here, its bucket and element seldom in the cache.
 */
#ifndef WATCH_SLOTS  /* a test defines a smaller table to exercise the overflow */
#define WATCH_SLOTS 16384
#endif

struct watch_slot {
    u64 cgroup_id;    /* 0: free */
    struct watch_config config;
    u64 unused;       /* 32 bytes: none across two cache lines */
};

BPF_ARRAY(watch_slots, struct watch_slot, WATCH_SLOTS);
BPF_HASH(watch_overflow, u64, struct watch_config, MAX_WATCHED_CGROUPS);
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
/*
 * Processes of watched cgroups. Each fork writes one, so this is the hottest write: a hash insert
 * (bucket lock, freelist, cold bucket) cost 300-500 ns per fork here, an LRU insert more. A process
 * goes in the array slot of its tgid modulo PROCESS_SLOTS, which is plain memory (the verifier
 * inlines array lookups); only when a live process already holds that slot (possible where
 * pid_max > PROCESS_SLOTS) does it go in the overflow hash. Every entry is removed when its process
 * exits (sched_process_exit runs for every process, watched or not). When both are full, new
 * processes go untracked: their exec events carry ppid 0, and no exit event is sent for them.
 * Claiming a slot is not atomic (bcc's default BPF target has no compare-and-swap): two forks
 * racing for one slot on two CPUs could mix their entries; with pid_max up to PROCESS_SLOTS (the
 * kernel's default pid_max is 32768) no two live processes ever share a slot.
 */
#ifndef PROCESS_SLOTS  /* a test defines smaller tables to exercise the overflow */
#define PROCESS_SLOTS 32768
#define MAX_OVERFLOW_PROCESSES 16384
#endif
BPF_ARRAY(process_slots, struct process_info, PROCESS_SLOTS);
BPF_HASH(process_overflow, u32, struct process_info, MAX_OVERFLOW_PROCESSES);

/*
 * Entries put in an overflow table (process_overflow here, mm_overflow in memory.bpf.c) minus those deleted:
 * while 0 (for processes, always where pid_max <= PROCESS_SLOTS) a key missing from its array slot is not
 * looked up in the table, which saves a hash lookup in programs that run for every process, switch or change.
 */
#define OVERFLOW_PROCESSES 0
#define OVERFLOW_MMS 1
#define OVERFLOW_WATCHES 2  /* kept by user space, which alone writes watch_overflow */
BPF_ARRAY(overflow_entries, s64, 3);

static __always_inline s64 *overflow_count(u32 table)
{
    return overflow_entries.lookup(&table);
}

/* Whether a key missing from its array slot may be in overflow table `table`. */
static __always_inline int overflow_in_use(u32 table)
{
    s64 *entries = overflow_count(table);
    return entries && *entries > 0;
}

/* Fibonacci hashing: the upper half of the product spreads keys whose low bits repeat with a stride. */
static __always_inline u32 fibonacci_hash(u64 key)
{
    return (u32)((key * 0x9E3779B97F4A7C15ULL) >> 32);
}

/* Cgroup ids are kernfs inode numbers, handed out in sequence to every cgroupfs file too, so their low bits
 * repeat with a stride (monitor.py computes the same slot). */
static __always_inline u32 watch_slot_index(u64 cgroup_id)
{
    return fibonacci_hash(cgroup_id) % WATCH_SLOTS;
}

/*
 * The watch of `cgroup_id`, or NULL. User space rewrites a slot with one map update that a reader may see
 * half done: a config read as zeros names no memory (memory_of refuses ref 0), and a slot is given to another
 * cgroup only after unwatch() emptied its memory entry, so a stale config's memory_ref no longer matches.
 */
static __always_inline struct watch_config *find_watch(u64 cgroup_id)
{
    u32 index = watch_slot_index(cgroup_id);
    struct watch_slot *slot = watch_slots.lookup(&index);
    if (slot && slot->cgroup_id == cgroup_id)
        return &slot->config;
    return overflow_in_use(OVERFLOW_WATCHES) ? watch_overflow.lookup(&cgroup_id) : 0;
}

/* The process's array slot if it holds the process; costs no helper call. */
static __always_inline struct process_info *find_process_slot(u32 tgid)
{
    u32 index = tgid % PROCESS_SLOTS;
    struct process_info *slot = process_slots.lookup(&index);
    if (slot && slot->tgid == tgid)
        return slot;
    return 0;
}

static __always_inline struct process_info *find_process(u32 tgid)
{
    struct process_info *slot = find_process_slot(tgid);
    if (slot)
        return slot;
    return overflow_in_use(OVERFLOW_PROCESSES) ? process_overflow.lookup(&tgid) : 0;
}

static __always_inline void track_process(u32 tgid, u32 ppid, u64 cgroup_id, u64 memory_ref)
{
    u32 index = tgid % PROCESS_SLOTS;
    struct process_info *slot = process_slots.lookup(&index);
    if (!slot)
        return;  /* cannot happen (index < PROCESS_SLOTS); the verifier wants the check */
    if (slot->tgid == 0 || slot->tgid == tgid) {  /* free, or left by an earlier process of this pid */
        slot->tgid = tgid;
        slot->ppid = ppid;
        slot->cgroup_id = cgroup_id;
        slot->rss = 0;
        slot->memory_ref = memory_ref;
        return;
    }
    struct process_info info = {.tgid = tgid, .ppid = ppid, .cgroup_id = cgroup_id, .memory_ref = memory_ref};
    s64 *entries = overflow_count(OVERFLOW_PROCESSES);
    if (process_overflow.insert(&tgid, &info) == 0) {
        if (entries)
            __sync_fetch_and_add(entries, 1);
    } else {
        process_overflow.update(&tgid, &info);  /* an entry of an earlier process of this pid */
    }
}

static __always_inline void forget_process(u32 tgid)
{
    struct process_info *slot = find_process_slot(tgid);
    if (slot) {
        slot->tgid = 0;
        return;
    }
    s64 *entries = overflow_count(OVERFLOW_PROCESSES);
    if (process_overflow.delete(&tgid) == 0 && entries)
        __sync_fetch_and_add(entries, -1);
}

static __always_inline int event_is_wanted(u32 kind)
{
    u32 *wanted = event_wanted.lookup(&kind);
    return wanted && *wanted;
}

/*
 * A ring-buffer record of `size` bytes (a compile-time constant) with its header filled in for the
 * current task, or 0 when the kind is not wanted or the ring is full (counted as lost). Only the
 * header is written here: the caller fills the rest of a longer record.
 */
static __always_inline void *reserve_event(u32 kind, u64 cgroup_id, u64 size)
{
    if (!event_is_wanted(kind))
        return 0;
    struct event *event = events.ringbuf_reserve(size);
    if (!event) {
        u64 *lost = events_lost.lookup(&kind);
        if (lost)
            (*lost)++;
        return 0;
    }
    u64 pid_tgid = bpf_get_current_pid_tgid();
    event->kind = kind;
    event->pid = (u32)pid_tgid;
    event->ppid = 0;
    event->tgid = pid_tgid >> 32;
    event->cgroup_id = cgroup_id;
    event->ktime_ns = bpf_ktime_get_ns();
    event->value0 = 0;
    event->value1 = 0;
    event->value2 = 0;
    event->value3 = 0;
    bpf_get_current_comm(&event->comm, sizeof(event->comm));  /* fills (and pads) all 16 bytes */
    return event;
}

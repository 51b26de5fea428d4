/*
 * Resident memory of watched cgroups, summed from the kernel's per-mm RSS counters (kmem:rss_stat),
 * and spike detection against a per-cgroup threshold. This works without a memory controller:
 * it counts file, anon and shmem pages mapped by the cgroup's processes (swap entries excluded).
 * An mm is charged to the cgroup its owner ran in when it was first seen.
 */

/* The kernel's MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES (rss_stat's `member`), under names of our own:
 * the kernel's are enum constants that a header included by a later unit would clash with. */
#define RSS_MEMBER_FILE 0
#define RSS_MEMBER_ANON 1
#define RSS_MEMBER_SHMEM 3

struct mm_rss {
    s64 file;
    s64 anon;
    s64 shmem;
    u64 cgroup_id;
    u64 tgid;
    char comm[16];
};

/* Kernel-owned: user space creates the entry at watch time and only reads it afterwards. */
struct cgroup_memory {
    s64 rss;
    s64 peak;
};

BPF_TABLE("lru_hash", u32, struct mm_rss, mm_rss, MAX_TRACKED_PROCESSES);
BPF_HASH(cgroup_memory, u64, struct cgroup_memory, MAX_WATCHED_CGROUPS);

static __always_inline void report_spike(struct mm_rss *mm, s64 rss, u64 threshold, int own_mm)
{
    struct event *event = reserve_event(EVENT_SPIKE, mm->cgroup_id, sizeof(struct event));
    if (!event)
        return;
    if (!own_mm) {
        /* Counters changed from another context (teardown, fork): name the mm's owner instead. */
        event->pid = mm->tgid;
        event->tgid = mm->tgid;
        __builtin_memcpy(event->comm, mm->comm, sizeof(event->comm));
    }
    event->value0 = rss;
    event->value1 = threshold;
    events.ringbuf_submit(event, 0);
}

TRACEPOINT_PROBE(kmem, rss_stat)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct watch_config *config = watched_cgroups.lookup(&cgroup_id);
    int own_mm = args->curr;
    u32 mm_id = args->mm_id;
    struct mm_rss *mm;
    if (!config) {
        if (own_mm)
            return 0; /* an unwatched process touching its own memory: the common case, cheap */
        mm = mm_rss.lookup(&mm_id);
        if (!mm)
            return 0;
    } else {
        mm = mm_rss.lookup(&mm_id);
        if (!mm) {
            if (!own_mm)
                return 0;
            u64 pid_tgid = bpf_get_current_pid_tgid();
            struct mm_rss fresh = {.cgroup_id = cgroup_id, .tgid = pid_tgid >> 32};
            bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
            mm_rss.insert(&mm_id, &fresh);
            mm = mm_rss.lookup(&mm_id);
            if (!mm)
                return 0;
        }
    }

    s64 *counter;
    int member = args->member;
    if (member == RSS_MEMBER_FILE)
        counter = &mm->file;
    else if (member == RSS_MEMBER_ANON)
        counter = &mm->anon;
    else if (member == RSS_MEMBER_SHMEM)
        counter = &mm->shmem;
    else
        return 0;
    s64 size = args->size;
    s64 delta = size - __sync_lock_test_and_set(counter, size);
    if (delta == 0)
        return 0;
    u64 owner = mm->cgroup_id;
    if (mm->file == 0 && mm->anon == 0 && mm->shmem == 0)
        mm_rss.delete(&mm_id); /* the mm is gone (exit or exec teardown) */

    struct cgroup_memory *memory = cgroup_memory.lookup(&owner);
    if (!memory)
        return 0; /* the owner cgroup is no longer watched */
    s64 rss = __sync_fetch_and_add(&memory->rss, delta) + delta;
    if (rss > memory->peak)
        memory->peak = rss;

    if (owner != cgroup_id)
        config = watched_cgroups.lookup(&owner);
    if (!config || config->spike_threshold == 0)
        return 0;
    s64 threshold = config->spike_threshold;
    /* One event per threshold setting: user space re-arms with set_threshold (e.g. a higher one). */
    if (rss >= threshold && __sync_lock_test_and_set(&config->spike_fired, 1) == 0)
        report_spike(mm, rss, threshold, own_mm && owner == cgroup_id);
    return 0;
}

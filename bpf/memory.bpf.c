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
    u32 tgid;
    u32 mm_id;        /* in mm_slots: 0 marks a free slot */
    char comm[16];
};

/* Kernel-owned: user space creates the entry at watch time and only reads it afterwards. */
struct cgroup_memory {
    s64 rss;
    s64 peak;
};

/*
 * The mms of watched processes, like the process table (common.bpf.c): each in the array slot of its
 * mm_id modulo MM_SLOTS (plain memory, inlined lookup; an LRU hash lookup and insert cost about 13 ns
 * more per run on average here, where this program runs ~77 times per short process), or in the
 * overflow LRU when a live mm holds that slot. An mm leaves its slot when its counters reach zero (exit
 * or exec teardown); a slot whose owner cgroup is no longer watched may be taken over, so an mm whose
 * teardown was never seen does not hold its slot forever.
 */
#ifndef MM_SLOTS  /* a test defines a smaller table to exercise the overflow */
#define MM_SLOTS 16384
#endif

BPF_ARRAY(mm_slots, struct mm_rss, MM_SLOTS);
BPF_TABLE("lru_hash", u32, struct mm_rss, mm_overflow, MAX_TRACKED_PROCESSES);
BPF_HASH(cgroup_memory, u64, struct cgroup_memory, MAX_WATCHED_CGROUPS);

static __always_inline struct mm_rss *find_mm(u32 mm_id)
{
    u32 index = mm_id % MM_SLOTS;
    struct mm_rss *slot = mm_slots.lookup(&index);
    if (slot && slot->mm_id == mm_id)
        return slot;
    return mm_overflow.lookup(&mm_id);
}

/* A new mm of the current task (in watched cgroup `cgroup_id`), with zero counters. */
static __always_inline struct mm_rss *track_mm(u32 mm_id, u64 cgroup_id)
{
    u32 index = mm_id % MM_SLOTS;
    struct mm_rss *slot = mm_slots.lookup(&index);
    if (!slot)
        return 0;  /* cannot happen (index < MM_SLOTS); the verifier wants the check */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (slot->mm_id == 0 || !cgroup_memory.lookup(&slot->cgroup_id)) {
        slot->file = 0;
        slot->anon = 0;
        slot->shmem = 0;
        slot->cgroup_id = cgroup_id;
        slot->tgid = tgid;
        slot->mm_id = mm_id;
        bpf_get_current_comm(&slot->comm, sizeof(slot->comm));
        return slot;
    }
    struct mm_rss fresh = {.cgroup_id = cgroup_id, .tgid = tgid, .mm_id = mm_id};
    bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
    mm_overflow.insert(&mm_id, &fresh);
    return mm_overflow.lookup(&mm_id);
}

static __always_inline void forget_mm(struct mm_rss *mm, u32 mm_id)
{
    u32 index = mm_id % MM_SLOTS;
    struct mm_rss *slot = mm_slots.lookup(&index);
    if (slot == mm)
        slot->mm_id = 0;
    else
        mm_overflow.delete(&mm_id);
}

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

/* Adds an mm's change to its owner cgroup's RSS (unless no longer watched) and reports a crossing. */
static __always_inline void add_to_owner(struct mm_rss *mm, s64 delta, struct watch_config *config, u64 cgroup_id,
                                         int own_mm)
{
    u64 owner = mm->cgroup_id;
    struct cgroup_memory *memory = cgroup_memory.lookup(&owner);
    if (!memory)
        return;
    s64 rss = __sync_fetch_and_add(&memory->rss, delta) + delta;
    if (rss > memory->peak)
        memory->peak = rss;
    if (owner != cgroup_id)
        config = watched_cgroups.lookup(&owner);
    if (!config || config->spike_threshold == 0)
        return;
    s64 threshold = config->spike_threshold;
    /* One event per threshold setting: user space re-arms with set_threshold (e.g. a higher one). */
    if (rss >= threshold && __sync_lock_test_and_set(&config->spike_fired, 1) == 0)
        report_spike(mm, rss, threshold, own_mm && owner == cgroup_id);
}

TRACEPOINT_PROBE(kmem, rss_stat)
{
    /* Swap entries (MM_SWAPENTS) are not resident memory: dropped before any lookup. */
    int member = args->member;
    if (member != RSS_MEMBER_FILE && member != RSS_MEMBER_ANON && member != RSS_MEMBER_SHMEM)
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct watch_config *config = watched_cgroups.lookup(&cgroup_id);
    int own_mm = args->curr;
    u32 mm_id = args->mm_id;
    struct mm_rss *mm;
    if (!config) {
        if (own_mm)
            return 0; /* an unwatched process touching its own memory: the common case, cheap */
        mm = find_mm(mm_id);
        if (!mm)
            return 0;
    } else {
        mm = find_mm(mm_id);
        if (!mm) {
            if (!own_mm)
                return 0;
            mm = track_mm(mm_id, cgroup_id);
            if (!mm)
                return 0;
        }
    }

    s64 *counter = member == RSS_MEMBER_FILE ? &mm->file : member == RSS_MEMBER_ANON ? &mm->anon : &mm->shmem;
    s64 size = args->size;
    s64 delta = size - __sync_lock_test_and_set(counter, size);
    if (delta == 0)
        return 0;
    add_to_owner(mm, delta, config, cgroup_id, own_mm);
    if (mm->file == 0 && mm->anon == 0 && mm->shmem == 0)
        forget_mm(mm, mm_id); /* the mm is gone (exit or exec teardown) */
    return 0;
}

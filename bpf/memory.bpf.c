/*
 * The programs that feed rss.bpf.c's accounting: the samplers where the kernel's layout is known from BTF
 * (RSS_SAMPLING), else kmem:rss_stat on every change. Only one way is attached (monitor.py).
 */

#ifdef RSS_SAMPLING

/*
 * Attached to two raw tracepoints (programs.py): sched_switch, where the task leaving the CPU is still the current
 * one, and hrtimer_expire_entry, the timer interrupts (the scheduler tick among them), for a tracked process that
 * runs without leaving its CPU. One program for both: the same code, one JIT image to keep in the instruction
 * cache, and one cost figure for RSS sampling. Its runs in timer interrupts cost more (docs/benchmarks.md).
 */
int rss_sample(struct bpf_raw_tracepoint_args *ctx)
{
    sample_current_task();
    return 0;
}

#endif

/* Every change: the last value of each counter of each mm, charged to the cgroup its owner ran in when the mm
 * was first seen. */
struct mm_rss {
    s64 file;         /* bytes */
    s64 anon;
    s64 shmem;
    u64 memory_ref;   /* of the cgroup the mm was first seen in */
    u64 key;          /* the tracepoint's mm_id; in mm_slots 0 marks a free slot */
    struct rss_owner owner;  /* the process the mm was first seen from */
};

/*
 * The mms of watched processes, like the process table (common.bpf.c): each in the array slot its key
 * hashes to (plain memory, inlined lookup), or in the overflow LRU when a live mm holds that slot. An mm
 * leaves its slot when its counters reach 0; a slot whose owner cgroup is no longer watched may be taken over,
 * so an mm whose end was never seen does not hold it forever.
 */
#ifndef MM_SLOTS  /* a test defines a smaller table to exercise the overflow */
#define MM_SLOTS 16384
#endif

BPF_ARRAY(mm_slots, struct mm_rss, MM_SLOTS);
/* Its entry count (overflow_count(OVERFLOW_MMS), common.bpf.c) is 0 on most runs; an LRU eviction leaves it
 * high: lookups, never misses. */
BPF_TABLE("lru_hash", u64, struct mm_rss, mm_overflow, MAX_TRACKED_PROCESSES);

static __always_inline u32 mm_slot_index(u64 key)
{
    /* mm addresses are slab-aligned, so their low bits alone would crowd a few slots. */
    return fibonacci_hash(key) % MM_SLOTS;
}

static __always_inline struct mm_rss *find_mm(u64 key)
{
    u32 index = mm_slot_index(key);
    struct mm_rss *slot = mm_slots.lookup(&index);
    if (slot && slot->key == key)
        return slot;
    return overflow_in_use(OVERFLOW_MMS) ? mm_overflow.lookup(&key) : 0;
}

/* A new mm of the current task, charged to the watched cgroup `memory_ref` names, with zero counters. */
static __always_inline struct mm_rss *track_mm(u64 key, u64 memory_ref)
{
    u32 index = mm_slot_index(key);
    struct mm_rss *slot = mm_slots.lookup(&index);
    if (!slot)
        return 0;  /* cannot happen (index < MM_SLOTS); the verifier wants the check */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (slot->key == 0 || !memory_of(slot->memory_ref)) {
        slot->file = 0;
        slot->anon = 0;
        slot->shmem = 0;
        slot->memory_ref = memory_ref;
        slot->owner.tgid = tgid;
        slot->key = key;
        bpf_get_current_comm(&slot->owner.comm, sizeof(slot->owner.comm));
        return slot;
    }
    struct mm_rss fresh = {.memory_ref = memory_ref, .key = key, .owner.tgid = tgid};
    bpf_get_current_comm(&fresh.owner.comm, sizeof(fresh.owner.comm));
    s64 *entries = overflow_count(OVERFLOW_MMS);
    if (!entries || mm_overflow.insert(&key, &fresh) != 0)
        return 0;
    __sync_fetch_and_add(entries, 1);
    return mm_overflow.lookup(&key);
}

static __always_inline void forget_mm(struct mm_rss *mm, u64 key)
{
    u32 index = mm_slot_index(key);
    struct mm_rss *slot = mm_slots.lookup(&index);
    if (slot == mm) {
        slot->key = 0;
        return;
    }
    s64 *entries = overflow_count(OVERFLOW_MMS);
    if (mm_overflow.delete(&key) == 0 && entries)
        __sync_fetch_and_add(entries, -1);
}

/* Records that counter `member` of `mm` is now `size` bytes; returns the change. */
static __always_inline s64 update_counter(struct mm_rss *mm, int member, s64 size)
{
    s64 *counter = member == RSS_MEMBER_FILE ? &mm->file : member == RSS_MEMBER_ANON ? &mm->anon : &mm->shmem;
    if (*counter == size)
        return 0;  /* nothing changed (a swap-in, a counter moved back): no atomic exchange */
    s64 delta = size - __sync_lock_test_and_set(counter, size);
    if (delta != 0)
        add_to_cgroup(mm->memory_ref, delta, &mm->owner);
    return delta;
}

/*
 * Every change of an mm's counters, with the exact sum the kernel puts in the record (it sums the percpu
 * counter). The key is the record's mm_id; an mm whose counters all reach 0 is gone (exit or exec teardown)
 * and leaves its slot. A tracked mm's change goes to its owner cgroup whoever makes it (the process itself,
 * its parent copying it at fork, reclaim); an mm is first tracked from its own process in a watched cgroup.
 */
TRACEPOINT_PROBE(kmem, rss_stat)
{
    int member = args->member;
    /* Swap entries (MM_SWAPENTS) are not resident memory: dropped before any lookup. */
    if (member != RSS_MEMBER_FILE && member != RSS_MEMBER_ANON && member != RSS_MEMBER_SHMEM)
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct watch_config *config = find_watch(cgroup_id);
    int own_mm = args->curr;
    u64 key = args->mm_id;
    struct mm_rss *mm;
    if (!config) {
        if (own_mm)
            return 0; /* an unwatched process touching its own memory: the common case, cheap */
        mm = find_mm(key);
        if (!mm)
            return 0;
    } else {
        mm = find_mm(key);
        if (!mm) {
            if (!own_mm)
                return 0;
            mm = track_mm(key, config->memory_ref);
            if (!mm)
                return 0;
        }
    }
    if (update_counter(mm, member, args->size) != 0 && mm->file == 0 && mm->anon == 0 &&
        mm->shmem == 0)
        forget_mm(mm, key);
    return 0;
}

/*
 * Resident memory of watched cgroups, summed from the kernel's per-mm RSS counters (kmem:rss_stat),
 * and spike detection against a per-cgroup threshold. This works without a memory controller:
 * it counts file, anon and shmem pages mapped by the cgroup's processes (swap entries excluded).
 * An mm is charged to the cgroup its owner ran in when it was first seen.
 *
 * Two ways in, chosen by the loader (monitor.py):
 * - RSS_STAT_RAW: a raw tracepoint, where the kernel passes (mm, member, count) (before 6.2) and BTF gives
 *   task_struct.mm's offset: no trace record is filled (on a page-fault loop here an empty program cost about
 *   40 ns per hit raw, 120-150 on the tracepoint). The mm's address is the key.
 * - otherwise the tracepoint (6.2 and later: its record has the exact sum of the percpu counter, which the
 *   raw arguments do not; btf.py says why); the key is its mm_id.
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
    u64 key;          /* the mm's address (raw) or mm_id (tracepoint); in mm_slots 0 marks a free slot */
    u32 tgid;
    u32 unused;
    char comm[16];
};

/* Kernel-owned: user space creates the entry at watch time and only reads it afterwards. */
struct cgroup_memory {
    s64 rss;
    s64 peak;
};

/*
 * The mms of watched processes, like the process table (common.bpf.c): each in the array slot its key
 * hashes to (plain memory, inlined lookup; an LRU hash lookup and insert cost about 13 ns more per run
 * on average here, where this program runs ~77 times per short process), or in the overflow LRU when a
 * live mm holds that slot. An mm leaves its slot at its teardown; a slot whose owner cgroup is no longer
 * watched may be taken over, so an mm whose teardown was never seen does not hold its slot forever.
 */
#ifndef MM_SLOTS  /* a test defines a smaller table to exercise the overflow */
#define MM_SLOTS 16384
#endif

BPF_ARRAY(mm_slots, struct mm_rss, MM_SLOTS);
BPF_TABLE("lru_hash", u64, struct mm_rss, mm_overflow, MAX_TRACKED_PROCESSES);
/* Entries put in mm_overflow minus those deleted: while 0 (the usual case) a key missing from its slot is not
 * looked up there, which saves a hash lookup on most runs. An LRU eviction leaves it high: lookups, never misses. */
BPF_ARRAY(mm_overflow_entries, s64, 1);
BPF_HASH(cgroup_memory, u64, struct cgroup_memory, MAX_WATCHED_CGROUPS);

static __always_inline u32 mm_slot_index(u64 key)
{
    /* Fibonacci hashing: mm addresses are slab-aligned, so their low bits alone would crowd a few slots. */
    return (u32)((key * 0x9E3779B97F4A7C15ULL) >> 32) % MM_SLOTS;
}

static __always_inline s64 *overflow_entries(void)
{
    u32 zero = 0;
    return mm_overflow_entries.lookup(&zero);
}

static __always_inline struct mm_rss *find_mm(u64 key)
{
    u32 index = mm_slot_index(key);
    struct mm_rss *slot = mm_slots.lookup(&index);
    if (slot && slot->key == key)
        return slot;
    s64 *entries = overflow_entries();
    if (!entries || *entries <= 0)
        return 0;
    return mm_overflow.lookup(&key);
}

/* A new mm of the current task (in watched cgroup `cgroup_id`), with zero counters. */
static __always_inline struct mm_rss *track_mm(u64 key, u64 cgroup_id)
{
    u32 index = mm_slot_index(key);
    struct mm_rss *slot = mm_slots.lookup(&index);
    if (!slot)
        return 0;  /* cannot happen (index < MM_SLOTS); the verifier wants the check */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (slot->key == 0 || !cgroup_memory.lookup(&slot->cgroup_id)) {
        slot->file = 0;
        slot->anon = 0;
        slot->shmem = 0;
        slot->cgroup_id = cgroup_id;
        slot->tgid = tgid;
        slot->key = key;
        bpf_get_current_comm(&slot->comm, sizeof(slot->comm));
        return slot;
    }
    struct mm_rss fresh = {.cgroup_id = cgroup_id, .key = key, .tgid = tgid};
    bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
    s64 *entries = overflow_entries();
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
    s64 *entries = overflow_entries();
    if (mm_overflow.delete(&key) == 0 && entries)
        __sync_fetch_and_add(entries, -1);
}

static __always_inline void report_spike(struct mm_rss *mm, u64 cgroup_id, s64 rss, u64 threshold)
{
    struct event *event = reserve_event(EVENT_SPIKE, cgroup_id, sizeof(struct event));
    if (!event)
        return;
    if (event->tgid != mm->tgid) {
        /* Counters changed from another process (fork, reclaim, teardown): name the mm's owner instead. */
        event->pid = mm->tgid;
        event->tgid = mm->tgid;
        __builtin_memcpy(event->comm, mm->comm, sizeof(event->comm));
    }
    event->value0 = rss;
    event->value1 = threshold;
    events.ringbuf_submit(event, 0);
}

/* Adds an mm's change to its owner cgroup's RSS (unless no longer watched) and reports a crossing.
 * `config` belongs to `cgroup_id`, the current task's cgroup, when the caller has looked it up (else NULL, 0). */
static __always_inline void add_to_owner(struct mm_rss *mm, s64 delta, struct watch_config *config, u64 cgroup_id)
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
        report_spike(mm, owner, rss, threshold);
}

/* Records that counter `member` of `mm` is now `size` bytes; returns the change. */
static __always_inline s64 update_counter(struct mm_rss *mm, int member, s64 size, struct watch_config *config,
                                          u64 cgroup_id)
{
    s64 *counter = member == RSS_MEMBER_FILE ? &mm->file : member == RSS_MEMBER_ANON ? &mm->anon : &mm->shmem;
    if (*counter == size)
        return 0;  /* nothing changed (a swap-in, a counter moved back): no atomic exchange */
    s64 delta = size - __sync_lock_test_and_set(counter, size);
    if (delta != 0)
        add_to_owner(mm, delta, config, cgroup_id);
    return delta;
}

/* Records a counter's new value; an mm whose counters all reach 0 is gone (exit or exec teardown) and leaves its
 * slot: both ways in see exact counters. */
static __always_inline void count_change(struct mm_rss *mm, u64 key, int member, s64 size, struct watch_config *config,
                                         u64 cgroup_id)
{
    if (update_counter(mm, member, size, config, cgroup_id) != 0 && mm->file == 0 && mm->anon == 0 && mm->shmem == 0)
        forget_mm(mm, key);
}

static __always_inline int is_resident_member(int member)
{
    /* Swap entries (MM_SWAPENTS) are not resident memory: dropped before any lookup. */
    return member == RSS_MEMBER_FILE || member == RSS_MEMBER_ANON || member == RSS_MEMBER_SHMEM;
}

#ifdef RSS_STAT_RAW

static __always_inline u64 read_kernel_u64(u64 address)
{
    u64 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (void *)address);
    return value;
}

static __always_inline int mm_is_current(u64 mm)
{
    return read_kernel_u64(bpf_get_current_task() + TASK_MM_OFFSET) == mm;
}

static __always_inline s64 counter_bytes(struct bpf_raw_tracepoint_args *ctx)
{
    s64 pages = (s64)ctx->args[2];
    return pages < 0 ? 0 : pages << RSS_PAGE_SHIFT;
}

/*
 * Most runs are for an mm already tracked, or for one that has nothing to count yet: neither needs the
 * task's cgroup. A tracked mm's change goes to its owner cgroup whoever makes it (the process itself, its
 * parent copying it at fork, reclaim); an mm is first tracked from its own process in a watched cgroup.
 */
RAW_TRACEPOINT_PROBE(rss_stat)
{
    int member = (int)ctx->args[1];
    if (!is_resident_member(member))
        return 0;
    u64 key = ctx->args[0];
    struct mm_rss *mm = find_mm(key);
    if (mm) {
        count_change(mm, key, member, counter_bytes(ctx), 0, 0);
        return 0;
    }
    s64 size = counter_bytes(ctx);
    if (size == 0 || !mm_is_current(key))
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct watch_config *config = watched_cgroups.lookup(&cgroup_id);
    if (!config)
        return 0;
    mm = track_mm(key, cgroup_id);
    if (mm)
        count_change(mm, key, member, size, config, cgroup_id);
    return 0;
}

#else

TRACEPOINT_PROBE(kmem, rss_stat)
{
    int member = args->member;
    if (!is_resident_member(member))
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct watch_config *config = watched_cgroups.lookup(&cgroup_id);
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
            mm = track_mm(key, cgroup_id);
            if (!mm)
                return 0;
        }
    }
    count_change(mm, key, member, args->size, config, cgroup_id);
    return 0;
}

#endif

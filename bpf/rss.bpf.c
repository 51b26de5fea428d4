/*
 * Resident memory of watched cgroups (a library unit: the loader compiles it after common.bpf.c, before the
 * programs). Each mm of a watched process is counted once, in the cgroup its owner ran in when it was first
 * seen; a cgroup's RSS is the sum of its mms' and is checked against the cgroup's spike threshold. This works
 * without a memory controller: it counts file, anon and shmem pages mapped by the cgroup's processes (swap
 * entries excluded).
 *
 * Two ways to learn an mm's RSS (memory.bpf.c), chosen by the loader (monitor.py):
 * - RSS_SAMPLING: read the mm's counters (offsets from BTF, btf.py) when a watched task leaves a CPU, at timer
 *   interrupts while one runs, and when a process exits. The kernel changes these counters about 77 times in
 *   a short process's life; a program on each change (kmem:rss_stat) cost more than 2 % of a fork/exec load.
 * - otherwise, kmem:rss_stat: every change, with the exact sum its record carries.
 */

/* The kernel's MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES (rss_stat's `member`), under names of our own:
 * the kernel's are enum constants that a header included by a later unit would clash with. */
#define RSS_MEMBER_FILE 0
#define RSS_MEMBER_ANON 1
#define RSS_MEMBER_SHMEM 3

/*
 * A watched cgroup's RSS, in the array slot user space gave it at watch() (watch_config.memory_slot) and
 * cleared at unwatch(); in between only the kernel writes it. An array rather than a hash keyed by the cgroup:
 * each sample and each exit adds to it, and a hash lookup cost ~100 ns of the exit program's ~300 here.
 */
struct cgroup_memory {
    s64 rss;
    s64 peak;
    u64 cgroup_id;    /* the slot's cgroup; 0: free. An mm of an unwatched cgroup no longer matches it */
};

/* A watched cgroup's spike threshold, in the same slot: written by user space (watch(), set_threshold()), except
 * `fired`, which the kernel sets when it reports a crossing; user space re-arms by rewriting the entry. */
struct cgroup_spike {
    u64 threshold;    /* bytes of summed process RSS; 0: no spike detection */
    u64 fired;
    u64 cgroup_id;
};

struct mm_rss {
    s64 file;         /* kmem:rss_stat: the last value of each counter, in bytes */
    s64 anon;
    s64 shmem;
    s64 rss;          /* sampling: the sum at the last sample, in bytes */
    u64 cgroup_id;
    u64 key;          /* the mm's address (sampling) or mm_id (kmem:rss_stat); in mm_slots 0 marks a free slot */
    u32 tgid;         /* the owner: the process the mm was first seen from */
    u32 memory_slot;  /* its cgroup's, when the mm was first seen */
    char comm[16];
};

/*
 * The mms of watched processes, like the process table (common.bpf.c): each in the array slot its key
 * hashes to (plain memory, inlined lookup), or in the overflow LRU when a live mm holds that slot. An mm
 * leaves its slot when its owner exits (sampling) or its counters reach 0 (kmem:rss_stat); a slot whose owner
 * cgroup is no longer watched may be taken over, so an mm whose end was never seen does not hold it forever.
 */
#ifndef MM_SLOTS  /* a test defines a smaller table to exercise the overflow */
#define MM_SLOTS 16384
#endif

BPF_ARRAY(mm_slots, struct mm_rss, MM_SLOTS);
BPF_TABLE("lru_hash", u64, struct mm_rss, mm_overflow, MAX_TRACKED_PROCESSES);
/* Entries put in mm_overflow minus those deleted: while 0 (the usual case) a key missing from its slot is not
 * looked up there, which saves a hash lookup on most runs. An LRU eviction leaves it high: lookups, never misses. */
BPF_ARRAY(mm_overflow_entries, s64, 1);
BPF_ARRAY(cgroup_memory, struct cgroup_memory, MAX_WATCHED_CGROUPS);
BPF_ARRAY(cgroup_spike, struct cgroup_spike, MAX_WATCHED_CGROUPS);

/* The entry of the cgroup that owns `mm`; NULL once that cgroup is no longer watched. */
static __always_inline struct cgroup_memory *owner_memory(struct mm_rss *mm)
{
    u32 index = mm->memory_slot;
    struct cgroup_memory *memory = cgroup_memory.lookup(&index);
    return memory && memory->cgroup_id == mm->cgroup_id ? memory : 0;
}

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

/* A new mm of the current task, charged to watched cgroup `cgroup_id` (its `memory_slot`), with zero counters. */
static __always_inline struct mm_rss *track_mm(u64 key, u64 cgroup_id, u32 memory_slot)
{
    u32 index = mm_slot_index(key);
    struct mm_rss *slot = mm_slots.lookup(&index);
    if (!slot)
        return 0;  /* cannot happen (index < MM_SLOTS); the verifier wants the check */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (slot->key == 0 || !owner_memory(slot)) {
        slot->file = 0;
        slot->anon = 0;
        slot->shmem = 0;
        slot->rss = 0;
        slot->cgroup_id = cgroup_id;
        slot->tgid = tgid;
        slot->memory_slot = memory_slot;
        slot->key = key;
        bpf_get_current_comm(&slot->comm, sizeof(slot->comm));
        return slot;
    }
    struct mm_rss fresh = {.cgroup_id = cgroup_id, .key = key, .tgid = tgid, .memory_slot = memory_slot};
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

/* Adds an mm's change to its owner cgroup's RSS (unless no longer watched) and reports a crossing on growth. */
static __always_inline void add_to_owner(struct mm_rss *mm, s64 delta)
{
    struct cgroup_memory *memory = owner_memory(mm);
    if (!memory)
        return;
    s64 rss = __sync_fetch_and_add(&memory->rss, delta) + delta;
    if (rss > memory->peak)
        memory->peak = rss;
    if (delta <= 0)
        return;
    u32 index = mm->memory_slot;
    struct cgroup_spike *spike = cgroup_spike.lookup(&index);
    if (!spike || spike->cgroup_id != mm->cgroup_id || spike->threshold == 0)
        return;
    s64 threshold = spike->threshold;
    /* One event per threshold setting: user space re-arms with set_threshold (e.g. a higher one). */
    if (rss >= threshold && __sync_lock_test_and_set(&spike->fired, 1) == 0)
        report_spike(mm, mm->cgroup_id, rss, threshold);
}

#ifdef RSS_SAMPLING

static __always_inline u64 read_kernel_u64(u64 address)
{
    u64 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (void *)address);
    return value;
}

/* The mm's counters (MM_FILEPAGES .. MM_SHMEMPAGES), copied in one read; the fields taken from the copy are
 * 8-byte aligned (btf.py checks). */
#define RSS_COUNTERS 4
#define RSS_STAT_WORDS (RSS_COUNTERS * RSS_COUNTER_SIZE / 8)

static __always_inline int read_rss_stat(u64 mm, u64 *stat)
{
    return bpf_probe_read_kernel(stat, RSS_STAT_WORDS * 8, (void *)(mm + MM_RSS_STAT_OFFSET));
}

static __always_inline s64 at_least_zero(s64 pages)
{
    return pages < 0 ? 0 : pages;
}

#ifdef RSS_PERCPU

#define COUNTER_WORD(member, field_offset) (((member) * RSS_COUNTER_SIZE + (field_offset)) / 8)
#define GLOBAL_PAGES(stat, member) ((s64)(stat)[COUNTER_WORD(member, PERCPU_COUNTER_COUNT_OFFSET)])
#define CPU_PARTS(stat, member) ((stat)[COUNTER_WORD(member, PERCPU_COUNTER_COUNTERS_OFFSET)])

static __always_inline s32 read_kernel_s32(u64 address)
{
    s32 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (void *)address);
    return value;
}

/* Each CPU's per-CPU offset, found by calibrate_cpu_offset below for the CPUs online at load (0: unknown, not
 * added). */
BPF_ARRAY(cpu_offsets, u64, RSS_CPUS);

/*
 * Resident pages: each percpu counter's global part plus each CPU's, as percpu_counter_sum() adds them but
 * without its lock. The global parts are read first: a CPU's part folded into its global part between the
 * reads is then missed (the next sample has it), never counted twice. Since 6.6 an mm's counters share one
 * per-CPU allocation, so a CPU's parts are one 16-byte read; before, they are read one by one.
 */
static __always_inline s64 resident_pages(u64 mm)
{
    u64 stat[RSS_STAT_WORDS];
    if (read_rss_stat(mm, stat) != 0)
        return 0;
    s64 file = GLOBAL_PAGES(stat, RSS_MEMBER_FILE);
    s64 anon = GLOBAL_PAGES(stat, RSS_MEMBER_ANON);
    s64 shmem = GLOBAL_PAGES(stat, RSS_MEMBER_SHMEM);
    u64 file_parts = CPU_PARTS(stat, RSS_MEMBER_FILE);
    u64 anon_parts = CPU_PARTS(stat, RSS_MEMBER_ANON);
    u64 shmem_parts = CPU_PARTS(stat, RSS_MEMBER_SHMEM);
    int adjacent = anon_parts == file_parts + 4 * RSS_MEMBER_ANON && shmem_parts == file_parts + 4 * RSS_MEMBER_SHMEM;
    for (u32 cpu = 0; cpu < RSS_CPUS; cpu++) {
        u32 index = cpu;
        u64 *offset = cpu_offsets.lookup(&index);
        if (!offset || !*offset)
            continue;
        if (adjacent) {
            s32 parts[RSS_COUNTERS] = {};
            bpf_probe_read_kernel(parts, sizeof(parts), (void *)(file_parts + *offset));
            file += parts[RSS_MEMBER_FILE];
            anon += parts[RSS_MEMBER_ANON];
            shmem += parts[RSS_MEMBER_SHMEM];
        } else {
            file += read_kernel_s32(file_parts + *offset);
            anon += read_kernel_s32(anon_parts + *offset);
            shmem += read_kernel_s32(shmem_parts + *offset);
        }
    }
    return at_least_zero(file) + at_least_zero(anon) + at_least_zero(shmem);
}

/* The calibration's evidence, per CPU: the runqueue the offset was found from (user space checks them). */
BPF_ARRAY(cpu_runqueues, u64, RSS_CPUS);

/*
 * Attached to sched_switch only while the loader makes every online CPU switch (monitor.py): finds this CPU's
 * per-CPU offset from its runqueue (btf.py's CpuOffsetAnchor) and stores it in cpu_offsets.
 */
int calibrate_cpu_offset(struct bpf_raw_tracepoint_args *ctx)
{
    u32 cpu = bpf_get_smp_processor_id();
    u64 cfs_rq = read_kernel_u64(bpf_get_current_task() + TASK_CFS_RQ_OFFSET);
    u64 runqueue = cfs_rq ? read_kernel_u64(cfs_rq + CFS_RQ_RQ_OFFSET) : 0;
    if (!runqueue || read_kernel_s32(runqueue + RQ_CPU_OFFSET) != cpu)
        return 0;
    u64 area = runqueue - PCPU_RUNQUEUES;  /* this CPU's copy of the per-CPU section */
#ifdef PCPU_CPU_NUMBER
    if (read_kernel_s32(area + PCPU_CPU_NUMBER) != cpu)
        return 0;
#endif
    u64 *offset = cpu_offsets.lookup(&cpu);
    u64 *evidence = cpu_runqueues.lookup(&cpu);
    if (!offset || !evidence)
        return 0;
    *offset = read_kernel_u64(area + PCPU_THIS_CPU_OFF);
    *evidence = runqueue;
    return 0;
}

#else

/* Before 6.2 the counters are atomic longs (each task batches up to 64 changes before adding them). */
static __always_inline s64 resident_pages(u64 mm)
{
    u64 stat[RSS_STAT_WORDS];
    if (read_rss_stat(mm, stat) != 0)
        return 0;
    return at_least_zero((s64)stat[RSS_MEMBER_FILE]) + at_least_zero((s64)stat[RSS_MEMBER_ANON]) +
           at_least_zero((s64)stat[RSS_MEMBER_SHMEM]);
}

#endif

/* Takes the mm `key` out of its cgroup's RSS if process `tgid` owns it (a process sharing another's mm does
 * not). */
static __always_inline void forget_owned_mm(u64 key, u32 tgid)
{
    struct mm_rss *mm = find_mm(key);
    if (!mm || mm->tgid != tgid)
        return;
    add_to_owner(mm, -__sync_lock_test_and_set(&mm->rss, 0));
    forget_mm(mm, key);
}

/* Reads the RSS of mm `key`, used by tracked process `tgid` (its entry `process` remembers the mm: when that
 * changes (exec), the old one is forgotten; at the process's exit, the last one: release_process_rss). */
static __always_inline void sample_process_rss(struct process_info *process, u32 tgid, u64 key)
{
    if (process->mm != key) {
        if (process->mm)
            forget_owned_mm(process->mm, tgid);
        process->mm = key;
    }
    struct mm_rss *mm = find_mm(key);
    if (!mm) {
        mm = track_mm(key, process->cgroup_id, process->memory_slot);
        if (!mm)
            return;
    }
    s64 rss = resident_pages(key) << RSS_PAGE_SHIFT;
    s64 delta = rss - __sync_lock_test_and_set(&mm->rss, rss);
    if (delta != 0)
        add_to_owner(mm, delta);
}

static __always_inline u64 current_mm(void)
{
    return read_kernel_u64(bpf_get_current_task() + TASK_MM_OFFSET);  /* 0: a kernel thread, or past exit_mm() */
}

/* At a context switch: the leaving task's RSS if its cgroup is watched. A process that was in its cgroup before
 * the watch (neither its fork nor an exec seen) is tracked from its first switch on. */
static __always_inline void sample_leaving_task(void)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct watch_config *config = watched_cgroups.lookup(&cgroup_id);
    if (!config)
        return;
    u64 key = current_mm();
    if (!key)
        return;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct process_info *process = find_process(tgid);
    if (!process) {
        track_process(tgid, 0, cgroup_id, config->memory_slot);
        process = find_process(tgid);
        if (!process)
            return;
    }
    sample_process_rss(process, tgid, key);
}

/* At a timer interrupt: the running task's RSS if it is a tracked process. The process table's array is the
 * filter here (one array element), not the cgroup lookup: in an interrupt little of what a program touches is
 * in the cache, and the cgroup id and hash lookup alone cost ~350 ns a run. A process in the overflow hash
 * (only where pid_max > 32768) is sampled at its context switches only. */
static __always_inline void sample_running_task(void)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == 0)
        return;  /* the idle task (and 0 marks a free slot) */
    struct process_info *process = find_process_slot(tgid);
    if (!process)
        return;
    u64 key = current_mm();
    if (key)
        sample_process_rss(process, tgid, key);
}

/*
 * At the exit of tracked process `tgid` (lifecycle.bpf.c): its mm leaves its cgroup's RSS. No last sample is
 * taken: it cost about 370 ns per exit here (cold per-CPU parts, two hash lookups), more than the rest of the
 * exit program; a process that exits before its first sample is not counted (docs/bpf.md).
 */
static __always_inline void release_process_rss(struct process_info *process, u32 tgid)
{
    if (process->mm)
        forget_owned_mm(process->mm, tgid);
}

#else

static __always_inline void release_process_rss(struct process_info *process, u32 tgid)
{
}

#endif

/*
 * Resident memory of watched cgroups (a library unit: the loader compiles it after common.bpf.c, before the
 * programs). A watched cgroup's RSS is the summed RSS of its processes, checked against the cgroup's spike
 * threshold. This works without a memory controller: it counts file, anon and shmem pages mapped by the
 * processes (swap entries excluded).
 *
 * Two ways to learn it, chosen by the loader (monitor.py; docs/bpf.md):
 * - RSS_SAMPLING: each tracked process's mm counters are read (offsets from BTF, btf.py) when it leaves a CPU
 *   and at timer interrupts while it runs; its last sample is counted in the process table's entry and leaves
 *   the cgroup with the process. The kernel changes these counters about 77 times in a short process's life; a
 *   program on each change (kmem:rss_stat) cost more than 2 % of a fork/exec load.
 * - otherwise kmem:rss_stat (memory.bpf.c): every change, with the exact sum its record carries, kept per mm.
 */

/* The kernel's MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES (rss_stat's `member`), under names of our own:
 * the kernel's are enum constants that a header included by a later unit would clash with. */
#define RSS_MEMBER_FILE 0
#define RSS_MEMBER_ANON 1
#define RSS_MEMBER_SHMEM 3

/*
 * A watched cgroup's RSS, in the array slot user space gave it at watch() and cleared at unwatch(); in between
 * only the kernel writes it. An array rather than a hash keyed by the cgroup: each sample and each exit adds to
 * it, and a hash lookup cost ~100 ns of the exit program's ~300 here. A cgroup's `memory_ref` (watch_config) is
 * its slot in the low 32 bits and, above, a number user space gives each watch: a slot's later cgroup has
 * another, so what was counted for an unwatched cgroup (a process's or mm's memory_ref) no longer matches.
 */
#define MEMORY_SLOT(ref) ((u32)(ref))

struct cgroup_memory {
    s64 rss;
    s64 peak;
    u64 memory_ref;   /* 0: free */
    u64 unused;       /* 32 bytes: each entry in one cache line, which every sample and exit of its cgroup takes */
};

/* A watched cgroup's spike threshold, in the same slot: written by user space (watch(), set_threshold()), except
 * `fired`, which the kernel sets when it reports a crossing; user space re-arms by rewriting the entry. */
struct cgroup_spike {
    u64 threshold;    /* bytes of summed process RSS; 0: no spike detection */
    u64 fired;
    u64 memory_ref;
    u64 cgroup_id;    /* for the spike event */
};

BPF_ARRAY(cgroup_memory, struct cgroup_memory, MAX_WATCHED_CGROUPS);
BPF_ARRAY(cgroup_spike, struct cgroup_spike, MAX_WATCHED_CGROUPS);

/* The entry of the cgroup `memory_ref` names while it is still watched, else NULL (always for ref 0, which a
 * free entry holds). */
static __always_inline struct cgroup_memory *memory_of(u64 memory_ref)
{
    u32 slot = MEMORY_SLOT(memory_ref);
    struct cgroup_memory *memory = cgroup_memory.lookup(&slot);
    return memory && memory_ref && memory->memory_ref == memory_ref ? memory : 0;
}

/* Names the process that grew: the owner of a shared counter's mm, else (NULL) the current task. */
struct rss_owner {
    u32 tgid;
    char comm[16];
};

static __always_inline void report_spike(struct rss_owner *owner, u64 cgroup_id, s64 rss, u64 threshold)
{
    struct event *event = reserve_event(EVENT_SPIKE, cgroup_id, sizeof(struct event));
    if (!event)
        return;
    if (owner && event->tgid != owner->tgid) {
        /* Counters changed from another process (fork, reclaim, teardown): name the mm's owner instead. */
        event->pid = owner->tgid;
        event->tgid = owner->tgid;
        __builtin_memcpy(event->comm, owner->comm, sizeof(event->comm));
    }
    event->value0 = rss;
    event->value1 = threshold;
    events.ringbuf_submit(event, 0);
}

/* Adds `delta` bytes to the RSS of the cgroup `memory_ref` names (nothing once it is no longer watched) and
 * reports a crossing on growth. */
static __always_inline void add_to_cgroup(u64 memory_ref, s64 delta, struct rss_owner *owner)
{
    struct cgroup_memory *memory = memory_of(memory_ref);
    if (!memory)
        return;
    s64 rss = __sync_fetch_and_add(&memory->rss, delta) + delta;
    if (delta <= 0)
        return;
    if (rss > memory->peak)
        memory->peak = rss;
    u32 slot = MEMORY_SLOT(memory_ref);
    struct cgroup_spike *spike = cgroup_spike.lookup(&slot);
    if (!spike || spike->memory_ref != memory_ref || spike->threshold == 0)
        return;
    s64 threshold = spike->threshold;
    /* One event per threshold setting: user space re-arms with set_threshold (e.g. a higher one). */
    if (rss >= threshold && __sync_lock_test_and_set(&spike->fired, 1) == 0)
        report_spike(owner, spike->cgroup_id, rss, threshold);
}

/* At the exit of a tracked process (lifecycle.bpf.c): its sampled RSS leaves its cgroup (0 where RSS is counted
 * per mm instead: kmem:rss_stat sees the mm's counters fall to 0). No last sample is taken: it cost about 370 ns
 * per exit here, more than the rest of the exit program (docs/bpf.md). */
static __always_inline void release_process_rss(struct process_info *process)
{
    s64 counted = __sync_lock_test_and_set(&process->rss, 0);
    if (counted)
        add_to_cgroup(process->memory_ref, -counted, 0);
}

#ifdef RSS_SAMPLING

/*
 * A kernel struct's field as a plain load. `base` is a BTF-typed pointer (bpf_get_current_task_btf(), or a pointer
 * field loaded from one), so the verifier checks the offset against the kernel's BTF and the JIT guards the load;
 * bpf_probe_read_kernel is a helper call per read instead. Reading the task's fields and the percpu counters'
 * global parts this way took about 40 ns off each sample (docs/benchmarks.md). Needs bpf_get_current_task_btf
 * (Linux 5.11): where the sampler cannot load, the loader counts RSS at every change instead (monitor.py).
 */
#define KERNEL_FIELD(type, base, offset) (*(type *)((base) + (offset)))

static __always_inline u64 read_kernel_u64(u64 address)
{
    u64 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (void *)address);
    return value;
}

static __always_inline s64 at_least_zero(s64 pages)
{
    return pages < 0 ? 0 : pages;
}

#ifdef RSS_PERCPU

/* Field `field_offset` of the mm's percpu counter `member` (MM_FILEPAGES .. MM_SHMEMPAGES). */
#define COUNTER_FIELD(type, mm, member, field_offset) \
    KERNEL_FIELD(type, mm, MM_RSS_STAT_OFFSET + (member) * RSS_COUNTER_SIZE + (field_offset))

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
 * per-CPU allocation, so a CPU's parts are one 16-byte read; before, they are read one by one. (The per-CPU
 * parts are helper reads: without BTF type tags, which gcc-built kernels lack, the verifier does not know
 * `counters` as a per-CPU pointer.)
 */
static __always_inline s64 resident_pages(u64 mm)
{
    s64 file = COUNTER_FIELD(s64, mm, RSS_MEMBER_FILE, PERCPU_COUNTER_COUNT_OFFSET);
    s64 anon = COUNTER_FIELD(s64, mm, RSS_MEMBER_ANON, PERCPU_COUNTER_COUNT_OFFSET);
    s64 shmem = COUNTER_FIELD(s64, mm, RSS_MEMBER_SHMEM, PERCPU_COUNTER_COUNT_OFFSET);
    u64 file_parts = COUNTER_FIELD(u64, mm, RSS_MEMBER_FILE, PERCPU_COUNTER_COUNTERS_OFFSET);
    u64 anon_parts = COUNTER_FIELD(u64, mm, RSS_MEMBER_ANON, PERCPU_COUNTER_COUNTERS_OFFSET);
    u64 shmem_parts = COUNTER_FIELD(u64, mm, RSS_MEMBER_SHMEM, PERCPU_COUNTER_COUNTERS_OFFSET);
    int adjacent = anon_parts == file_parts + 4 * RSS_MEMBER_ANON && shmem_parts == file_parts + 4 * RSS_MEMBER_SHMEM;
    for (u32 cpu = 0; cpu < RSS_CPUS; cpu++) {
        u32 index = cpu;
        u64 *offset = cpu_offsets.lookup(&index);
        if (!offset || !*offset)
            continue;
        if (adjacent) {
            s32 parts[RSS_MEMBER_SHMEM + 1] = {};
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

/*
 * Before 6.2 the counters are atomic longs (each task batches up to 64 changes before adding them), copied in one
 * helper read: the verifiers of those kernels do not walk into an array of typedefs (atomic_long_t) for a load.
 */
static __always_inline s64 resident_pages(u64 mm)
{
    s64 counts[RSS_MEMBER_SHMEM + 1];
    if (bpf_probe_read_kernel(counts, sizeof(counts), (void *)(mm + MM_RSS_STAT_OFFSET)) != 0)
        return 0;
    return at_least_zero(counts[RSS_MEMBER_FILE]) + at_least_zero(counts[RSS_MEMBER_ANON]) +
           at_least_zero(counts[RSS_MEMBER_SHMEM]);
}

#endif

/*
 * Reads the RSS of the current task's mm and counts it for its process (entry `process`): the change since the
 * process's last sample goes to its cgroup. An exec's new mm simply replaces the old one's value.
 */
static __always_inline void sample_process_rss(struct process_info *process)
{
    u64 task = (u64)bpf_get_current_task_btf();
    if (KERNEL_FIELD(u64, task, TASK_VFORK_DONE_OFFSET))
        return;  /* a vfork child before its exec runs in its parent's mm, which the parent's samples count */
    u64 mm = KERNEL_FIELD(u64, task, TASK_MM_OFFSET);
    if (!mm)
        return;  /* a kernel thread, or a task past exit_mm() */
    s64 rss = resident_pages(mm) << RSS_PAGE_SHIFT;
    s64 delta = rss - (s64)__sync_lock_test_and_set(&process->rss, rss);
    if (delta != 0)
        add_to_cgroup(process->memory_ref, delta, 0);
}

/*
 * The sampler (memory.bpf.c's rss_sample): the current task's RSS if it is a tracked process (its fork or exec in
 * a watched cgroup was seen, or user space named it at watch() or track(): monitor.py). The process table's array
 * is the filter, not the watched-cgroup lookup the other programs do: the sampler runs at every context switch and
 * timer interrupt on the host, and in an interrupt, where little is in the cache, the cgroup id and hash lookup
 * alone cost ~350 ns.
 */
static __always_inline void sample_current_task(void)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == 0)
        return;  /* the idle task (and 0 marks a free slot) */
    struct process_info *process = find_process(tgid);
    if (process)
        sample_process_rss(process);
}

#endif

/* Process lifecycle in watched cgroups: new processes, execs, exits with their wait status. */

#define CLONE_THREAD_FLAG 0x00010000

/* task_newtask rather than sched_process_fork: it carries clone_flags, so threads can be skipped. */
TRACEPOINT_PROBE(task, task_newtask)
{
    if (args->clone_flags & CLONE_THREAD_FLAG)
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct watch_config *config = find_watch(cgroup_id);
    if (!config)
        return 0;
    u32 child = args->pid;
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    track_process(child, parent, cgroup_id, config->memory_ref);
    struct event *event = reserve_event(EVENT_FORK, cgroup_id, sizeof(struct event));
    if (!event)
        return 0;
    event->ppid = parent;
    event->pid = child;
    event->tgid = child;
    events.ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    return 0;
}

/*
 * Exec deduplication (user space turns it on in `exec_dedup`): each watch of a cgroup reports the
 * first exec of each path once. The ring-buffer record per exec cost about 250 ns here (reservation
 * and commit), more than the rest of the program; the check below costs about 100 ns when the
 * path's set is in the CPU cache (a path run often), about 400 ns when not.
 *
 * What was sent is remembered as 64-bit tags, hash(watch serial, path), in a set-associative table:
 * the tag picks a set of 8 (64 bytes), a lookup compares 8 tags of one array element (inlined array
 * access), an insert is one 8-byte store. A hash map lookup cost about 130 ns more per exec, LRU or
 * not; a direct-mapped table let two paths share a slot and push each other out. A full set drops
 * one of its tags, whose path may then be sent again (user space deduplicates anyway); a tag
 * collision (2^-63) would leave one path of one watch unreported. Entries of an unwatched cgroup
 * are dead: the watch serial (watch_config, a new one at every watch()) is part of the tag, so they
 * never match again and are overwritten in time; the table stays the same size whatever is watched.
 */
#define EXEC_SEEN_WAYS 8
#define EXEC_SEEN_SETS 8192  /* 512 KiB; a smaller table made cold lookups cheaper but drops more */

struct exec_path {
    char text[EVENT_PATH_SIZE];
};

struct exec_seen_set {
    u64 tags[EXEC_SEEN_WAYS];  /* 0: free */
};

BPF_ARRAY(exec_dedup, u32, 1);
BPF_ARRAY(exec_seen, struct exec_seen_set, EXEC_SEEN_SETS);
/* The tag each CPU last sent or found sent: a loop running one program again and again (a shell script's `grep`,
 * this benchmark's /bin/true) skips the set's lookup, about 40 ns when its line is no longer in the cache. */
BPF_PERCPU_ARRAY(exec_last_sent, u64, 1);

static __always_inline int exec_dedup_on(void)
{
    u32 zero = 0;
    u32 *on = exec_dedup.lookup(&zero);
    return on && *on;
}

/*
 * The tag of the first `length` bytes of `path` (the path and its NUL; bytes after it are not
 * initialised and are masked off), 8 bytes per step: a path of 10 to 30 bytes takes 2 to 4. Each
 * step is a bijection of the running hash (xor, odd multiplier, xorshift), so two paths of one
 * length that differ in one 8-byte word never collide; the final mix (murmur3's fmix64) spreads
 * every input bit over the set index and the way. The low bit is set: 0 marks a free way.
 */
static __always_inline u64 exec_tag(u64 watch_serial, const struct exec_path *path, u32 length)
{
    const u64 *words = (const u64 *)path->text;
    u64 hash = watch_serial;
#pragma unroll
    for (int i = 0; i < EVENT_PATH_SIZE / 8; i++) {
        int left = (int)length - i * 8;
        if (left <= 0)
            break;
        u64 word = words[i];
        if (left < 8)
            word &= (1ULL << (left * 8)) - 1;
        hash = (hash ^ word) * 0x9e3779b97f4a7c15ULL;
        hash ^= hash >> 32;
    }
    hash ^= hash >> 33;
    hash *= 0xff51afd7ed558ccdULL;
    hash ^= hash >> 33;
    hash *= 0xc4ceb9fe1a85ec53ULL;
    hash ^= hash >> 33;
    return hash | 1;
}

/* Into a free way, else over one the tag picks (two CPUs racing may both write one: harmless). */
static __always_inline void remember_exec(struct exec_seen_set *set, u64 tag)
{
#pragma unroll
    for (int way = 0; way < EXEC_SEEN_WAYS; way++) {
        if (set->tags[way] == 0) {
            set->tags[way] = tag;
            return;
        }
    }
    set->tags[(tag >> 1) % EXEC_SEEN_WAYS] = tag;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    struct watch_config *config = find_watch(cgroup_id);
    if (!config)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 ppid = 0;
    struct process_info *known = find_process(tgid);
    if (known) {
        if (known->cgroup_id != cgroup_id)
            known->cgroup_id = cgroup_id;  /* moved since its fork; stored only then, sparing the line a write */
        ppid = known->ppid;
    } else {
        /* A process attached to the cgroup from outside is tracked from its first exec on. */
        track_process(tgid, 0, cgroup_id, config->memory_ref);
    }
    if (!event_is_wanted(EVENT_EXEC))
        return 0;
    /* filename is a __data_loc field: offset in the low 16 bits, strlen + 1 in the high 16. */
    const char *filename = (const char *)args + (args->data_loc_filename & 0xFFFF);
    struct exec_seen_set *set = 0;
    u64 *last_sent = 0;
    u64 tag = 0;
    if (exec_dedup_on()) {
        u32 length = args->data_loc_filename >> 16;
        if (length > EVENT_PATH_SIZE)
            length = EVENT_PATH_SIZE;  /* as the record's path is cut */
        struct exec_path path;  /* the stack: cheaper than a per-CPU scratch map here */
        if (length > 0 && bpf_probe_read_kernel(path.text, length, filename) == 0) {
            tag = exec_tag(config->watch_serial, &path, length);
            u32 zero = 0;
            last_sent = exec_last_sent.lookup(&zero);
            if (last_sent && *last_sent == tag)
                return 0;
            u32 index = (tag >> 32) % EXEC_SEEN_SETS;
            set = exec_seen.lookup(&index);
            if (set) {
#pragma unroll
                for (int way = 0; way < EXEC_SEEN_WAYS; way++) {
                    if (set->tags[way] == tag) {
                        if (last_sent)
                            *last_sent = tag;
                        return 0;
                    }
                }
            }
        }
        /* An unreadable path has nothing to key on: it is sent each time. */
    }
    struct path_event *event = reserve_event(EVENT_EXEC, cgroup_id, sizeof(struct path_event));
    if (!event)
        return 0;  /* not remembered: the next exec of the path tries again */
    if (set)
        remember_exec(set, tag);
    if (last_sent)
        *last_sent = tag;
    event->header.ppid = ppid;
    /* Zero-fills the path when the read fails; the decoder stops at the first NUL. */
    bpf_probe_read_kernel_str(event->path, sizeof(event->path), filename);
    events.ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    return 0;
}

/*
 * The exiting task's status as waitpid reports it: do_exit() stores it in task->exit_code before this
 * tracepoint (for a group exit or a fatal signal, the group's code, which every thread exits with). Read
 * at its offset from BTF; without it the status is unknown. (The first version recorded it from
 * syscalls:sys_enter_exit_group and signal:signal_deliver: a program on any syscall tracepoint turns on
 * the syscall tracing path for every syscall of every process, +7 ns each here.)
 */
static __always_inline s64 exit_wait_status(void)
{
#ifdef KERNEL_LAYOUT
    s32 status = WAIT_STATUS_UNKNOWN;
    bpf_probe_read_kernel(&status, sizeof(status), (void *)(bpf_get_current_task() + TASK_EXIT_CODE_OFFSET));
    return status;
#else
    return WAIT_STATUS_UNKNOWN;
#endif
}

/*
 * Runs for every process on the host: the tracked-process lookup is the filter (while exit events are
 * wanted, a process not tracked - in its cgroup before the watch, never exec'd since - is checked against
 * the watched cgroups too). It removes the process's entry (also one whose cgroup stopped being watched
 * while it ran) and, where RSS is sampled, takes a last sample and takes its mm out of its cgroup's RSS.
 */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if ((u32)pid_tgid != tgid)
        return 0; /* a thread other than the leader: the process lives on */
    struct process_info *known = find_process(tgid);
    u32 ppid = 0;
    if (known) {
        ppid = known->ppid;
        release_process_rss(known);
        forget_process(tgid);
    }
    if (!event_is_wanted(EVENT_EXIT))
        return 0;
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!find_watch(cgroup_id))
        return 0;
    struct event *event = reserve_event(EVENT_EXIT, cgroup_id, sizeof(struct event));
    if (!event)
        return 0;
    event->ppid = ppid;
    event->value0 = exit_wait_status();
    events.ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    return 0;
}

/*
 * The programs that feed rss.bpf.c's accounting: the samplers where the kernel's layout is known from BTF
 * (RSS_SAMPLING), else kmem:rss_stat on every change. Only one way is attached (monitor.py).
 */

#ifdef RSS_SAMPLING

/* The task leaving the CPU is still the current one here. */
RAW_TRACEPOINT_PROBE(sched_switch)
{
    sample_leaving_task();
    return 0;
}

/* Timer interrupts (the scheduler tick among them) sample a watched task that runs without leaving its CPU. */
RAW_TRACEPOINT_PROBE(hrtimer_expire_entry)
{
    sample_running_task();
    return 0;
}

#endif

/* Records that counter `member` of `mm` is now `size` bytes; returns the change. */
static __always_inline s64 update_counter(struct mm_rss *mm, int member, s64 size)
{
    s64 *counter = member == RSS_MEMBER_FILE ? &mm->file : member == RSS_MEMBER_ANON ? &mm->anon : &mm->shmem;
    if (*counter == size)
        return 0;  /* nothing changed (a swap-in, a counter moved back): no atomic exchange */
    s64 delta = size - __sync_lock_test_and_set(counter, size);
    if (delta != 0)
        add_to_owner(mm, delta);
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
            mm = track_mm(key, cgroup_id, config->memory_slot);
            if (!mm)
                return 0;
        }
    }
    if (update_counter(mm, member, args->size) != 0 && mm->file == 0 && mm->anon == 0 &&
        mm->shmem == 0)
        forget_mm(mm, key);
    return 0;
}

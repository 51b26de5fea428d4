/*
 * The IMA digest of every file executed in a watched cgroup (BPF LSM, bprm_check_security).
 * bpf_ima_file_hash may sleep, so the loader loads this program itself with BPF_F_SLEEPABLE
 * (bcc's own loader passes no program flags). IMA computes the hash if it has none yet.
 */

#include <linux/binfmts.h>
#include <linux/fs.h>

LSM_PROBE(bprm_check_security, struct linux_binprm *bprm)
{
    u64 cgroup_id = bpf_get_current_cgroup_id();
    if (!find_watch(cgroup_id))
        return 0;
    struct digest_event *event = reserve_event(EVENT_EXEC_DIGEST, cgroup_id, sizeof(struct digest_event));
    if (!event)
        return 0;
    bpf_probe_read_kernel_str(event->path, sizeof(event->path), bprm->filename);
    /* The IMA hash algorithm (enum hash_algo), or a negative errno; the decoder reads only as many
     * digest bytes as the algorithm makes. */
    event->header.value0 = bpf_ima_file_hash(bprm->file, event->digest, sizeof(event->digest));
    events.ringbuf_submit(event, BPF_RB_NO_WAKEUP);
    return 0;
}

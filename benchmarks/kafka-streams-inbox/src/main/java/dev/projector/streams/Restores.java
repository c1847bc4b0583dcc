package dev.projector.streams;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.streams.processor.StateRestoreListener;

/**
 * The restores of the store from its changelog: each partition's start and
 * end printed, and the whole window (first start to last end) kept for
 * GET /progress.
 */
final class Restores implements StateRestoreListener {
    /** Changelog partitions being restored now. */
    final Set<TopicPartition> pending = ConcurrentHashMap.newKeySet();
    final AtomicLong partitions = new AtomicLong();
    final AtomicLong records = new AtomicLong();
    /** Wall-clock ms of the first start and of the last end; 0 before. */
    final AtomicLong firstStartMs = new AtomicLong();
    final AtomicLong lastEndMs = new AtomicLong();

    @Override
    public void onRestoreStart(TopicPartition tp, String store, long start, long end) {
        pending.add(tp);
        firstStartMs.compareAndSet(0, System.currentTimeMillis());
        System.out.printf("restoring %s from %s, offsets %d to %d%n", store, tp, start, end);
    }

    @Override
    public void onBatchRestored(TopicPartition tp, String store, long batchEnd, long restored) {
        records.addAndGet(restored);
    }

    @Override
    public void onRestoreEnd(TopicPartition tp, String store, long restored) {
        long now = System.currentTimeMillis();
        lastEndMs.set(now);
        partitions.incrementAndGet();
        pending.remove(tp);
        System.out.printf("restored %s from %s: %d records%n", store, tp, restored);
        if (pending.isEmpty()) {
            System.out.printf("restored so far: %d partitions, %d records, %d ms from the first start to the last end%n",
                partitions.get(), records.get(), now - firstStartMs.get());
        }
    }

    @Override
    public void onRestoreSuspended(TopicPartition tp, String store, long restored) {
        pending.remove(tp);
        System.out.printf("restore of %s from %s suspended after %d records%n", store, tp, restored);
    }
}

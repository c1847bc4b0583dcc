package dev.projector.streams;

import java.util.List;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The inbox-unread view as a topology: the inbox topic's events re-keyed
 * to the `user:site` views they touch (through the repartition topic
 * `<application id>-by-view-repartition`), aggregated per view into the
 * RocksDB store {@value #STORE}, whose changelog is
 * `<application id>-inbox-unread-changelog`. Counts what it does in
 * {@link Progress}.
 */
final class InboxTopology {
    /** The store's name, and the view's. */
    static final String STORE = "inbox-unread";
    /** The repartition topic's name within the application. */
    static final String BY_VIEW = "by-view";

    private InboxTopology() {}

    static Topology build(String topic, Progress progress) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(topic, Consumed.with(Serdes.String(), Serdes.String()))
            .flatMap((siteKey, event) -> deliveries(event, progress), Named.as("keys"))
            .groupByKey(Grouped.with(BY_VIEW, Serdes.String(), Delivery.SERDE))
            .aggregate(
                Unread::new,
                (viewKey, delivery, view) -> {
                    if (!view.apply(delivery)) {
                        progress.skipped.incrementAndGet();
                    }
                    progress.delivered();
                    return view;
                },
                Named.as("apply"),
                Materialized.<String, Unread, KeyValueStore<Bytes, byte[]>>as(STORE)
                    .withKeySerde(Serdes.String())
                    .withValueSerde(Unread.SERDE));
        return builder.build();
    }

    private static List<KeyValue<String, Delivery>> deliveries(String event, Progress progress) {
        progress.event();
        try {
            return Delivery.of(event);
        } catch (Delivery.Rejected e) {
            // The plugin's error: projector dead-letters the event; here it
            // is counted and dropped.
            long n = progress.rejected.incrementAndGet();
            if (n <= 10) {
                System.err.println("kafka-streams-inbox: event rejected: " + e.getMessage());
            }
            return List.of();
        }
    }

    /** Live counters, read by GET /progress. */
    static final class Progress {
        /** Source events mapped to their views. */
        final AtomicLong events = new AtomicLong();
        /** Deliveries aggregated (applied or skipped). */
        final AtomicLong deliveries = new AtomicLong();
        /** Deliveries skipped: a duplicate or older version. */
        final AtomicLong skipped = new AtomicLong();
        /** Events the view refuses. */
        final AtomicLong rejected = new AtomicLong();
        /** Wall-clock ms of the first event mapped, and of the last delivery. */
        final AtomicLong firstEventMs = new AtomicLong();
        final AtomicLong lastDeliveryMs = new AtomicLong();

        private void event() {
            if (events.getAndIncrement() == 0) {
                firstEventMs.set(System.currentTimeMillis());
            }
        }

        private void delivered() {
            deliveries.incrementAndGet();
            lastDeliveryMs.lazySet(System.currentTimeMillis());
        }
    }
}

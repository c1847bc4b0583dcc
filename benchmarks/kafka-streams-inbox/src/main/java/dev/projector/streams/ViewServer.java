package dev.projector.streams;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicReferenceArray;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyQueryMetadata;
import org.apache.kafka.streams.StoreQueryParameters;
import org.apache.kafka.streams.errors.InvalidStateStoreException;
import org.apache.kafka.streams.state.QueryableStoreTypes;
import org.apache.kafka.streams.state.ReadOnlyKeyValueStore;

/**
 * Interactive queries over HTTP (the JDK's server), on 127.0.0.1:
 *
 * <ul>
 *   <li>{@code GET /views/{key}}: the view's JSON, 404 when absent, 503
 *       while its partition is not queryable (rebalancing, restoring);
 *   <li>{@code GET /progress}: the state, the counters and the restore;
 *   <li>{@code GET /healthz}: {@code ok}, the server's floor.
 * </ul>
 *
 * A read asks Kafka Streams for the key's partition and reads that
 * partition's store (one store handle per partition, kept until it fails).
 */
final class ViewServer {
    private static final int THREADS = 4;
    private static final ObjectMapper MAPPER = new ObjectMapper();
    private static final Serializer<String> KEYS = Serdes.String().serializer();

    private final HttpServer server;
    private final ExecutorService pool;
    private KafkaStreams streams;
    private InboxTopology.Progress progress;
    private Restores restores;
    private final AtomicReferenceArray<ReadOnlyKeyValueStore<String, Unread>> stores =
        new AtomicReferenceArray<>(4096);

    /** Bound now (so that the port is known before the streams start), served by {@link #start}. */
    ViewServer(int port) throws IOException {
        // Without it the JDK's server leaves Nagle's algorithm on: an
        // answer written in two parts waits for the client's delayed ACK.
        System.setProperty("sun.net.httpserver.nodelay", "true");
        server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 1024);
        pool = Executors.newFixedThreadPool(THREADS);
        server.setExecutor(pool);
    }

    int port() {
        return server.getAddress().getPort();
    }

    void start(KafkaStreams streams, InboxTopology.Progress progress, Restores restores) {
        this.streams = streams;
        this.progress = progress;
        this.restores = restores;
        server.createContext("/views/", this::view);
        server.createContext("/progress", this::progress);
        server.createContext("/healthz", e -> answer(e, 200, "text/plain", "ok".getBytes(StandardCharsets.UTF_8)));
        server.start();
    }

    void stop() {
        server.stop(0);
        pool.shutdownNow();
    }

    private void view(HttpExchange e) throws IOException {
        if (!"GET".equals(e.getRequestMethod())) {
            error(e, 405, "method_not_allowed");
            return;
        }
        String raw = e.getRequestURI().getRawPath().substring("/views/".length());
        String key = URLDecoder.decode(raw, StandardCharsets.UTF_8);
        Unread view;
        try {
            view = lookup(key);
        } catch (InvalidStateStoreException x) {
            e.getResponseHeaders().set("retry-after", "1");
            error(e, 503, "not_queryable");
            return;
        }
        if (view == null) {
            error(e, 404, "not_found");
        } else {
            answer(e, 200, "application/json", view.render());
        }
    }

    private Unread lookup(String key) {
        KeyQueryMetadata where = streams.queryMetadataForKey(InboxTopology.STORE, key, KEYS);
        if (where == null || where.equals(KeyQueryMetadata.NOT_AVAILABLE)) {
            throw new InvalidStateStoreException("no metadata for " + key + " yet");
        }
        int p = where.partition();
        ReadOnlyKeyValueStore<String, Unread> store = stores.get(p);
        if (store == null) {
            store = streams.store(
                StoreQueryParameters.fromNameAndType(InboxTopology.STORE, QueryableStoreTypes.<String, Unread>keyValueStore())
                    .withPartition(p));
            stores.set(p, store);
        }
        try {
            return store.get(key);
        } catch (InvalidStateStoreException x) {
            stores.set(p, null);
            throw x;
        }
    }

    private void progress(HttpExchange e) throws IOException {
        ObjectNode o = MAPPER.createObjectNode();
        o.put("state", streams.state().name());
        o.put("events", progress.events.get());
        o.put("deliveries", progress.deliveries.get());
        o.put("skipped", progress.skipped.get());
        o.put("rejected", progress.rejected.get());
        o.put("first_event_ms", progress.firstEventMs.get());
        o.put("last_delivery_ms", progress.lastDeliveryMs.get());
        ObjectNode r = o.putObject("restore");
        r.put("pending", restores.pending.size());
        r.put("partitions", restores.partitions.get());
        r.put("records", restores.records.get());
        r.put("first_start_ms", restores.firstStartMs.get());
        r.put("last_end_ms", restores.lastEndMs.get());
        answer(e, 200, "application/json", MAPPER.writeValueAsBytes(o));
    }

    private static void error(HttpExchange e, int status, String code) throws IOException {
        answer(e, status, "application/json",
            ("{\"error\":\"" + code + "\"}").getBytes(StandardCharsets.UTF_8));
    }

    private static void answer(HttpExchange e, int status, String type, byte[] body) throws IOException {
        e.getResponseHeaders().set("content-type", type);
        e.sendResponseHeaders(status, body.length);
        try (OutputStream out = e.getResponseBody()) {
            out.write(body);
        }
    }
}

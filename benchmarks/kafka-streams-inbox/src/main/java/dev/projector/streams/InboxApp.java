package dev.projector.streams;

import java.nio.file.Path;
import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;

/**
 * The inbox-unread view of plugins/inbox-unread, kept by Kafka Streams:
 *
 * <pre>
 * java -jar target/kafka-streams-inbox.jar BOOTSTRAP TOPIC APPLICATION_ID STATE_DIR HTTP_PORT [GUARANTEE]
 * </pre>
 *
 * One stream thread, a commit every 1000 ms (projector's default commit
 * interval), processing guarantee exactly_once_v2 unless GUARANTEE says
 * otherwise (at_least_once). Prints {@code running on http://127.0.0.1:PORT}
 * at each move to RUNNING, and each restore; SIGTERM closes the instance
 * and leaves the group, so that a restart is assigned at once.
 */
public final class InboxApp {
    private InboxApp() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 5 || args.length > 6) {
            System.err.println("usage: kafka-streams-inbox BOOTSTRAP TOPIC APPLICATION_ID STATE_DIR HTTP_PORT [GUARANTEE]");
            System.exit(2);
        }
        String bootstrap = args[0];
        String topic = args[1];
        String applicationId = args[2];
        Path stateDir = Path.of(args[3]);
        int port = Integer.parseInt(args[4]);
        String guarantee = args.length > 5 ? args[5] : StreamsConfig.EXACTLY_ONCE_V2;

        ViewServer server = new ViewServer(port);
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        // Short, so that the threads' native names (15 characters: what
        // top and perf show) tell the stream thread, the state updater and
        // the producer apart.
        p.put(StreamsConfig.CLIENT_ID_CONFIG, "ks");
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
        p.put(StreamsConfig.APPLICATION_SERVER_CONFIG, "127.0.0.1:" + server.port());
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        // No global tables; set so that Kafka Streams does not warn of it.
        p.put(StreamsConfig.PROCESSING_EXCEPTION_HANDLER_GLOBAL_ENABLED_CONFIG, true);

        InboxTopology.Progress progress = new InboxTopology.Progress();
        Restores restores = new Restores();
        KafkaStreams streams = new KafkaStreams(InboxTopology.build(topic, progress), p);
        CountDownLatch done = new CountDownLatch(1);
        AtomicBoolean closing = new AtomicBoolean();
        AtomicBoolean failed = new AtomicBoolean();
        streams.setGlobalStateRestoreListener(restores);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING) {
                System.out.printf("running on http://127.0.0.1:%d (application id %s, %s, state dir %s)%n",
                    server.port(), applicationId, guarantee, stateDir);
            } else if ((now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) && !closing.get()) {
                System.err.println("kafka-streams-inbox: the instance stopped: " + now);
                failed.set(true);
                done.countDown();
            }
        });
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("kafka-streams-inbox: stream thread failed: " + e);
            return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            closing.set(true);
            server.stop();
            streams.close(CloseOptions.groupMembershipOperation(CloseOptions.GroupMembershipOperation.LEAVE_GROUP)
                .withTimeout(Duration.ofSeconds(30)));
            System.out.println("closed");
            done.countDown();
        }, "close"));

        server.start(streams, progress, restores);
        streams.start();
        done.await();
        if (failed.get()) {
            // The shutdown hook closes what is left.
            System.exit(1);
        }
    }
}

package dev.projector.streams;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KeyValue;

/**
 * One event as one view receives it, after the re-key: what the event does
 * to that view (plugins/inbox-unread's `apply`, decided for the view's
 * user), with the event's source, version and time. {@link #of} is the
 * plugin's `keys`: the `user:site` views an event touches.
 */
record Delivery(Action action, String source, long version, long timeMs, String conversation) {
    /** What an event does to one view. */
    enum Action {
        /** Unread at the event's time (and unarchived). */
        TOUCH,
        /** No longer unread. */
        REMOVE,
        ARCHIVE,
        UNARCHIVE,
        /** The view is touched (created, its version kept) but unchanged. */
        NONE
    }

    /** An event the plugin would refuse (a missing field, a bad id). */
    static final class Rejected extends Exception {
        Rejected(String message) {
            super(message);
        }
    }

    private static final ObjectMapper MAPPER = new ObjectMapper();
    private static final Action[] ACTIONS = Action.values();

    /**
     * The views an event in projector's JSON envelope touches, each with
     * its delivery; none for an event type the view ignores.
     */
    static List<KeyValue<String, Delivery>> of(String event) throws Rejected {
        JsonNode e;
        try {
            e = MAPPER.readTree(event);
        } catch (IOException x) {
            throw new Rejected("not JSON: " + x.getMessage());
        }
        String type = text(e, "type");
        String source = text(e, "source");
        long version = number(e, "version");
        long time = number(e, "time");
        JsonNode p = e.path("payload");
        List<KeyValue<String, Delivery>> out = new ArrayList<>(2);
        switch (type) {
            case "MessageSent" -> {
                String site = text(p, "site_id");
                String conversation = text(p, "conversation_id");
                String sender = text(p, "sender_id");
                add(out, key(sender, site), new Delivery(Action.REMOVE, source, version, time, conversation));
                for (JsonNode u : participants(p)) {
                    String user = u.asText();
                    if (!user.equals(sender)) {
                        add(out, key(user, site), new Delivery(Action.TOUCH, source, version, time, conversation));
                    }
                }
            }
            case "ConversationRead", "ParticipantRemoved" -> {
                String site = text(p, "site_id");
                add(out, key(text(p, "user_id"), site),
                    new Delivery(Action.REMOVE, source, version, time, text(p, "conversation_id")));
            }
            case "ParticipantAdded" -> {
                String site = text(p, "site_id");
                Action a = p.path("unread").asBoolean(false) ? Action.TOUCH : Action.NONE;
                add(out, key(text(p, "user_id"), site),
                    new Delivery(a, source, version, time, text(p, "conversation_id")));
            }
            case "ConversationArchived", "ConversationUnarchived", "ConversationDeleted" -> {
                String site = text(p, "site_id");
                Action a = switch (type) {
                    case "ConversationArchived" -> Action.ARCHIVE;
                    case "ConversationUnarchived" -> Action.UNARCHIVE;
                    default -> Action.REMOVE;
                };
                Delivery d = new Delivery(a, source, version, time, text(p, "conversation_id"));
                for (JsonNode u : participants(p)) {
                    out.add(KeyValue.pair(key(u.asText(), site), d));
                }
            }
            default -> { }
        }
        return out;
    }

    /** Like the plugin's `keys.dedup()`: a key repeated in a row counts once. */
    private static void add(List<KeyValue<String, Delivery>> out, String key, Delivery d) {
        if (out.isEmpty() || !out.get(out.size() - 1).key.equals(key)) {
            out.add(KeyValue.pair(key, d));
        }
    }

    /** The view key of a user on a site, refused as the plugin refuses it. */
    static String key(String user, String site) throws Rejected {
        if (user.isEmpty() || site.isEmpty() || user.indexOf(':') >= 0 || site.indexOf(':') >= 0) {
            throw new Rejected("bad user or site id: " + user + ", " + site);
        }
        return user + ':' + site;
    }

    private static String text(JsonNode node, String field) throws Rejected {
        JsonNode v = node.get(field);
        if (v == null || !v.isTextual()) {
            throw new Rejected("no string `" + field + "`");
        }
        return v.asText();
    }

    private static long number(JsonNode node, String field) throws Rejected {
        JsonNode v = node.get(field);
        if (v == null || !v.canConvertToLong()) {
            throw new Rejected("no integer `" + field + "`");
        }
        return v.asLong();
    }

    private static JsonNode participants(JsonNode p) throws Rejected {
        JsonNode list = p.get("participants");
        if (list == null || !list.isArray()) {
            throw new Rejected("no `participants` list");
        }
        return list;
    }

    /** On the repartition topic: action, version, time, source, conversation. */
    static final Serde<Delivery> SERDE = Serdes.serdeFrom(new Encoder(), new Decoder());

    private static final class Encoder implements Serializer<Delivery> {
        @Override
        public byte[] serialize(String topic, Delivery d) {
            if (d == null) {
                return null;
            }
            byte[] source = d.source.getBytes(StandardCharsets.UTF_8);
            byte[] conversation = d.conversation.getBytes(StandardCharsets.UTF_8);
            ByteBuffer out = ByteBuffer.allocate(1 + 8 + 8 + 2 + source.length + 2 + conversation.length);
            out.put((byte) d.action.ordinal());
            out.putLong(d.version);
            out.putLong(d.timeMs);
            putString(out, source);
            putString(out, conversation);
            return out.array();
        }
    }

    private static final class Decoder implements Deserializer<Delivery> {
        @Override
        public Delivery deserialize(String topic, byte[] data) {
            if (data == null) {
                return null;
            }
            ByteBuffer in = ByteBuffer.wrap(data);
            Action action = ACTIONS[in.get()];
            long version = in.getLong();
            long time = in.getLong();
            return new Delivery(action, getString(in), version, time, getString(in));
        }
    }

    static void putString(ByteBuffer out, byte[] utf8) {
        out.putShort((short) utf8.length);
        out.put(utf8);
    }

    static String getString(ByteBuffer in) {
        int n = Short.toUnsignedInt(in.getShort());
        String s = new String(in.array(), in.position(), n, StandardCharsets.UTF_8);
        in.position(in.position() + n);
        return s;
    }
}

package dev.projector.streams;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * One view: a user's unread conversations on a site, newest first and
 * bounded, as plugins/inbox-unread keeps them, with the highest version
 * applied per event source. Its stored form (RocksDB and the changelog) is
 * a compact binary one; {@link #render} is the JSON a read answers.
 */
final class Unread {
    /** One unread conversation; an archived one stays tracked, not shown. */
    static final class Entry {
        final String id;
        long updated;
        boolean archived;

        Entry(String id, long updated, boolean archived) {
            this.id = id;
            this.updated = updated;
            this.archived = archived;
        }
    }

    /** The bound of plugins/inbox-unread (its default `max_unread`). */
    static final int MAX_UNREAD = 1000;

    private static final byte FORMAT = 1;
    private static final JsonFactory JSON = new JsonFactory();

    /** Per event source, the highest version applied (few: kept as lists). */
    private final List<String> sources = new ArrayList<>(1);
    private final List<Long> versions = new ArrayList<>(1);
    /** Newest first: by (updated, id) descending. */
    final List<Entry> entries;

    Unread() {
        this(new ArrayList<>());
    }

    private Unread(List<Entry> entries) {
        this.entries = entries;
    }

    /**
     * Apply one delivery, unless its version is not above the highest this
     * view has applied from its source (a duplicate or an older event).
     *
     * @return whether it was applied
     */
    boolean apply(Delivery d) {
        int s = sources.indexOf(d.source());
        if (s >= 0 && d.version() <= versions.get(s)) {
            return false;
        }
        if (s >= 0) {
            versions.set(s, d.version());
        } else {
            sources.add(d.source());
            versions.add(d.version());
        }
        switch (d.action()) {
            case TOUCH -> touch(d.conversation(), d.timeMs());
            case REMOVE -> remove(d.conversation());
            case ARCHIVE -> setArchived(d.conversation(), true);
            case UNARCHIVE -> setArchived(d.conversation(), false);
            case NONE -> { }
        }
        return true;
    }

    private int position(String id) {
        for (int i = 0; i < entries.size(); i++) {
            if (entries.get(i).id.equals(id)) {
                return i;
            }
        }
        return -1;
    }

    private void remove(String id) {
        int i = position(id);
        if (i >= 0) {
            entries.remove(i);
        }
    }

    /** Mark `id` unread at `updated`, keeping newest first and the bound. */
    private void touch(String id, long updated) {
        int i = position(id);
        if (i >= 0) {
            updated = Math.max(updated, entries.remove(i).updated);
        }
        int at = entries.size();
        for (int j = 0; j < entries.size(); j++) {
            Entry e = entries.get(j);
            if (e.updated < updated || (e.updated == updated && e.id.compareTo(id) < 0)) {
                at = j;
                break;
            }
        }
        entries.add(at, new Entry(id, updated, false));
        while (entries.size() > MAX_UNREAD) {
            entries.remove(entries.size() - 1);
        }
    }

    private void setArchived(String id, boolean archived) {
        int i = position(id);
        if (i >= 0) {
            entries.get(i).archived = archived;
        }
    }

    /** The read answer: `{"count": n, "conversations": [{"id", "last_message_at"}]}`. */
    byte[] render() {
        ByteArrayOutputStream out = new ByteArrayOutputStream(64 + entries.size() * 48);
        try (JsonGenerator g = JSON.createGenerator(out)) {
            long shown = entries.stream().filter(e -> !e.archived).count();
            g.writeStartObject();
            g.writeNumberField("count", shown);
            g.writeArrayFieldStart("conversations");
            for (Entry e : entries) {
                if (!e.archived) {
                    g.writeStartObject();
                    g.writeStringField("id", e.id);
                    g.writeNumberField("last_message_at", e.updated);
                    g.writeEndObject();
                }
            }
            g.writeEndArray();
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out.toByteArray();
    }

    /** Stored form: format byte, versions, entries. */
    static final Serde<Unread> SERDE = Serdes.serdeFrom(new Encoder(), new Decoder());

    private static final class Encoder implements Serializer<Unread> {
        @Override
        public byte[] serialize(String topic, Unread v) {
            if (v == null) {
                return null;
            }
            List<byte[]> strings = new ArrayList<>(v.sources.size() + v.entries.size());
            int size = 1 + 2 + 4;
            for (String s : v.sources) {
                byte[] b = s.getBytes(StandardCharsets.UTF_8);
                strings.add(b);
                size += 2 + b.length + 8;
            }
            for (Entry e : v.entries) {
                byte[] b = e.id.getBytes(StandardCharsets.UTF_8);
                strings.add(b);
                size += 2 + b.length + 8 + 1;
            }
            ByteBuffer out = ByteBuffer.allocate(size);
            out.put(FORMAT);
            out.putShort((short) v.sources.size());
            int k = 0;
            for (int i = 0; i < v.sources.size(); i++) {
                Delivery.putString(out, strings.get(k++));
                out.putLong(v.versions.get(i));
            }
            out.putInt(v.entries.size());
            for (Entry e : v.entries) {
                Delivery.putString(out, strings.get(k++));
                out.putLong(e.updated);
                out.put((byte) (e.archived ? 1 : 0));
            }
            return out.array();
        }
    }

    private static final class Decoder implements Deserializer<Unread> {
        @Override
        public Unread deserialize(String topic, byte[] data) {
            if (data == null) {
                return null;
            }
            ByteBuffer in = ByteBuffer.wrap(data);
            byte format = in.get();
            if (format != FORMAT) {
                throw new IllegalArgumentException("unknown view format " + format);
            }
            int sources = in.getShort();
            Unread v = new Unread(new ArrayList<>());
            for (int i = 0; i < sources; i++) {
                v.sources.add(Delivery.getString(in));
                v.versions.add(in.getLong());
            }
            int n = in.getInt();
            for (int i = 0; i < n; i++) {
                String id = Delivery.getString(in);
                long updated = in.getLong();
                v.entries.add(new Entry(id, updated, in.get() != 0));
            }
            return v;
        }
    }
}

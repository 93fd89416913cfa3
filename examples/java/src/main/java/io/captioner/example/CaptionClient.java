package io.captioner.example;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

import org.apache.avro.AvroRuntimeException;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.common.utils.Utils;

/**
 * Publishes one caption job the way an outside system does (schemas/README.md, "Publishing jobs yourself")
 * and prints its reply as one JSON line.
 *
 * <pre>
 * CaptionClient BOOTSTRAP REQUEST_TOPIC REPLY_TOPIC IMAGE TIMEOUT_S
 *     exit 0: SUCCEEDED; 1: FAILED (the reply is printed all the same); 2: no final reply in time; 64: usage
 * CaptionClient encode CORRELATION_ID IMAGE CONTENT_TYPE REPLY_TOPIC REPLY_PARTITION|null DEADLINE_MS
 *     CREATED_AT_MS MAX_NEW_TOKENS|null
 *     prints the hex of the record's single-object encoding
 * CaptionClient partition NUM_PARTITIONS &lt; KEYS
 *     for each line of stdin (a UTF-8 key), prints "KEY PARTITION": where Kafka's Java producer puts it
 * </pre>
 */
public final class CaptionClient {
    static final int EXIT_SUCCEEDED = 0;
    static final int EXIT_FAILED = 1;
    static final int EXIT_TIMED_OUT = 2;
    static final int EXIT_USAGE = 64;

    /** The request topic's record limit: CAPTIONER_TOPIC_MAX_MESSAGE_BYTES's default in docs/settings.md. */
    static final int MAX_RECORD_BYTES = 16 * 1024 * 1024;

    static final Schema REQUEST_SCHEMA = schema("schemas/v1/caption_request.avsc");
    static final Schema REPLY_SCHEMA = schema("schemas/v1/caption_reply.avsc");

    private static final PrintStream OUT = new PrintStream(System.out, true, StandardCharsets.UTF_8);

    private CaptionClient() {}

    public static void main(String[] args) throws Exception {
        System.exit(run(args));
    }

    static int run(String[] args) throws Exception {
        if (args.length == 9 && args[0].equals("encode")) {
            OUT.println(HexFormat.of().formatHex(encodeRequest(requestFromArgs(args))));
            return EXIT_SUCCEEDED;
        }
        if (args.length == 2 && args[0].equals("partition")) {
            int partitions = Integer.parseInt(args[1]);
            // stdin, not argv: the JVM decodes arguments in the platform's locale, which may not be UTF-8.
            try (BufferedReader keys = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
                keys.lines().forEach(key -> OUT.println(key + " " + partitionForKey(key, partitions)));
            }
            return EXIT_SUCCEEDED;
        }
        if (args.length == 5) {
            return caption(args[0], args[1], args[2], Path.of(args[3]), Duration.ofSeconds(Long.parseLong(args[4])));
        }
        System.err.println("usage: CaptionClient BOOTSTRAP REQUEST_TOPIC REPLY_TOPIC IMAGE TIMEOUT_S");
        System.err.println("       CaptionClient encode CORRELATION_ID IMAGE CONTENT_TYPE REPLY_TOPIC"
                + " REPLY_PARTITION|null DEADLINE_MS CREATED_AT_MS MAX_NEW_TOKENS|null");
        System.err.println("       CaptionClient partition NUM_PARTITIONS < KEYS");
        return EXIT_USAGE;
    }

    // --- The contract ---------------------------------------------------------------------------------

    static Schema schema(String resource) {
        try (InputStream in = CaptionClient.class.getClassLoader().getResourceAsStream(resource)) {
            if (in == null) {
                throw new IllegalStateException(resource + " is not on the classpath");
            }
            return new Schema.Parser().parse(in);
        } catch (IOException e) {
            throw new IllegalStateException("cannot read " + resource, e);
        }
    }

    /** Timestamps are timestamp-millis longs: GenericData without logical-type conversions writes them as is. */
    static GenericRecord request(String correlationId, byte[] image, String contentType, String replyTopic,
            Integer replyPartition, long deadlineMs, long createdAtMs, Integer maxNewTokens) {
        return new GenericRecordBuilder(REQUEST_SCHEMA)
                .set("correlation_id", correlationId)
                .set("image", ByteBuffer.wrap(image))
                .set("content_type", contentType)
                .set("reply_topic", replyTopic)
                .set("reply_partition", replyPartition)
                .set("deadline", deadlineMs)
                .set("created_at", createdAtMs)
                .set("max_new_tokens", maxNewTokens)
                .build();
    }

    /** C3 01, the writer schema's CRC-64-AVRO fingerprint, then the Avro binary body. */
    static byte[] encodeRequest(GenericRecord request) throws IOException {
        BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), REQUEST_SCHEMA);
        ByteBuffer encoded = encoder.encode(request);
        byte[] bytes = new byte[encoded.remaining()];
        encoded.get(bytes);
        return bytes;
    }

    /** Reads replies written with any known reply schema version (only v1 so far) into the newest one. */
    static BinaryMessageDecoder<GenericRecord> replyDecoder() {
        return new BinaryMessageDecoder<>(GenericData.get(), REPLY_SCHEMA);
    }

    /** Kafka's default Java partitioner for a keyed record (BuiltInPartitioner.partitionForKey). */
    static int partitionForKey(String key, int partitions) {
        return Utils.toPositive(Utils.murmur2(key.getBytes(StandardCharsets.UTF_8))) % partitions;
    }

    private static GenericRecord requestFromArgs(String[] args) throws IOException {
        return request(args[1], Files.readAllBytes(Path.of(args[2])), args[3], args[4], nullableInt(args[5]),
                Long.parseLong(args[6]), Long.parseLong(args[7]), nullableInt(args[8]));
    }

    private static Integer nullableInt(String value) {
        return value.equals("null") ? null : Integer.valueOf(value);
    }

    // --- One job, one reply ---------------------------------------------------------------------------

    static int caption(String bootstrap, String requestTopic, String replyTopic, Path imagePath, Duration timeout)
            throws IOException, InterruptedException, ExecutionException, TimeoutException {
        byte[] image = readImage(imagePath);
        String correlationId = UUID.randomUUID().toString().replace("-", "");
        Instant now = Instant.now();
        Instant deadline = now.plus(timeout);
        GenericRecord job = request(correlationId, image, contentType(imagePath), replyTopic, null,
                deadline.toEpochMilli(), now.toEpochMilli(), null);
        try (KafkaConsumer<String, byte[]> replies = new KafkaConsumer<>(consumerConfig(bootstrap))) {
            // Every partition, from its end as of now: the key picks the reply's partition (reply_partition
            // is null), and nothing this client sends can be answered before the positions are fixed.
            List<TopicPartition> partitions = partitionsOf(replies, replyTopic, timeout);
            replies.assign(partitions);
            replies.seekToEnd(partitions);
            partitions.forEach(partition -> replies.position(partition, timeout));
            RecordMetadata sent = send(bootstrap, requestTopic, correlationId, encodeRequest(job), timeout);
            System.err.printf("sent %s to %s-%d@%d%n", correlationId, sent.topic(), sent.partition(), sent.offset());
            return awaitReply(replies, correlationId, deadline);
        }
    }

    private static byte[] readImage(Path path) throws IOException {
        long size = Files.size(path);
        if (size > MAX_RECORD_BYTES) {
            throw new IllegalArgumentException(path + " is " + size + " bytes, over the " + MAX_RECORD_BYTES
                    + "-byte record limit");
        }
        return Files.readAllBytes(path);
    }

    /** application/octet-stream is accepted: the worker reads the format from the bytes. */
    static String contentType(Path path) {
        String name = path.getFileName().toString().toLowerCase(Locale.ROOT);
        String extension = name.substring(name.lastIndexOf('.') + 1);
        return switch (extension) {
            case "jpg", "jpeg", "mpo" -> "image/jpeg";
            case "png" -> "image/png";
            case "webp" -> "image/webp";
            case "gif" -> "image/gif";
            case "bmp" -> "image/bmp";
            case "tif", "tiff" -> "image/tiff";
            default -> "application/octet-stream";
        };
    }

    private static List<TopicPartition> partitionsOf(KafkaConsumer<String, byte[]> consumer, String topic,
            Duration timeout) {
        List<PartitionInfo> infos = consumer.partitionsFor(topic, timeout);
        if (infos == null || infos.isEmpty()) {
            throw new IllegalStateException("reply topic " + topic + " does not exist: create it first");
        }
        List<TopicPartition> partitions = new ArrayList<>();
        infos.forEach(info -> partitions.add(new TopicPartition(topic, info.partition())));
        return partitions;
    }

    private static RecordMetadata send(String bootstrap, String topic, String key, byte[] value, Duration timeout)
            throws InterruptedException, ExecutionException, TimeoutException {
        try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(producerConfig(bootstrap))) {
            return producer.send(new ProducerRecord<>(topic, key, value)).get(timeout.toMillis(), TimeUnit.MILLISECONDS);
        }
    }

    /** At least once: RETRYING replies precede the final one, and a duplicate final reply may follow it. */
    private static int awaitReply(KafkaConsumer<String, byte[]> replies, String correlationId, Instant deadline) {
        BinaryMessageDecoder<GenericRecord> decoder = replyDecoder();
        while (Instant.now().isBefore(deadline)) {
            Duration left = Duration.between(Instant.now(), deadline);
            for (ConsumerRecord<String, byte[]> record : replies.poll(min(left, Duration.ofMillis(500)))) {
                GenericRecord reply = decodeOrNull(decoder, record);
                if (reply == null || !correlationId.equals(reply.get("correlation_id").toString())) {
                    continue;
                }
                String status = reply.get("status").toString();
                if (status.equals("SUCCEEDED") || status.equals("FAILED")) {
                    OUT.println(GenericData.get().toString(reply));
                    return status.equals("SUCCEEDED") ? EXIT_SUCCEEDED : EXIT_FAILED;
                }
                System.err.println("not final yet: " + GenericData.get().toString(reply));
            }
        }
        System.err.println("no final reply for " + correlationId + " before its deadline");
        return EXIT_TIMED_OUT;
    }

    /** Another writer's garbage on a reply topic is skipped, not fatal. */
    private static GenericRecord decodeOrNull(BinaryMessageDecoder<GenericRecord> decoder,
            ConsumerRecord<String, byte[]> record) {
        if (record.value() == null) {
            return null;
        }
        try {
            return decoder.decode(record.value());
        } catch (AvroRuntimeException | IOException e) {
            System.err.printf("skipping %s-%d@%d: %s%n", record.topic(), record.partition(), record.offset(),
                    e.getMessage());
            return null;
        }
    }

    private static Duration min(Duration a, Duration b) {
        return a.compareTo(b) < 0 ? a : b;
    }

    private static Properties consumerConfig(String bootstrap) {
        Properties config = new Properties();
        config.putAll(Map.of(
                ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap,
                ConsumerConfig.CLIENT_ID_CONFIG, "captioner-java-example",
                ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false",
                ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName(),
                ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName()));
        return config;
    }

    private static Properties producerConfig(String bootstrap) {
        Properties config = new Properties();
        config.putAll(Map.of(
                ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap,
                ProducerConfig.CLIENT_ID_CONFIG, "captioner-java-example",
                ProducerConfig.ACKS_CONFIG, "all",
                ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true",
                ProducerConfig.MAX_REQUEST_SIZE_CONFIG, String.valueOf(MAX_RECORD_BYTES),
                ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName(),
                ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName()));
        return config;
    }
}

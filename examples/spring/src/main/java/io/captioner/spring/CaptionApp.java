package io.captioner.spring;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.UUID;
import java.util.concurrent.ExecutionException;

import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.ApplicationArguments;
import org.springframework.boot.ApplicationRunner;
import org.springframework.boot.ExitCodeGenerator;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.annotation.Bean;
import org.springframework.kafka.config.ConcurrentKafkaListenerContainerFactory;
import org.springframework.kafka.core.ProducerFactory;
import org.springframework.kafka.listener.ConcurrentMessageListenerContainer;
import org.springframework.kafka.requestreply.KafkaReplyTimeoutException;
import org.springframework.kafka.requestreply.ReplyingKafkaTemplate;
import org.springframework.kafka.support.TopicPartitionOffset;

/**
 * Captions one image through Spring Kafka's request-reply: the template adds kafka_replyTopic (and, for one
 * assigned partition, kafka_replyPartition) and kafka_correlationId; the worker replies there, copying
 * kafka_correlationId, which is all the template matches on. Prints the reply as one JSON line; exit 0 on
 * SUCCEEDED, 1 on any other reply (printed all the same), 2 when none came in time.
 */
@SpringBootApplication
public class CaptionApp implements ApplicationRunner, ExitCodeGenerator {
    private final ReplyingKafkaTemplate<String, GenericRecord, GenericRecord> template;
    private final String requestTopic;
    private final String replyTopic;
    private final Path image;
    private final Duration timeout;
    private int exitCode = 2;

    CaptionApp(ReplyingKafkaTemplate<String, GenericRecord, GenericRecord> template,
            @Value("${captioner.request-topic}") String requestTopic, @Value("${captioner.reply-topic}") String replyTopic,
            @Value("${captioner.image}") Path image, @Value("${captioner.timeout-s}") long timeoutS) {
        this.template = template;
        this.requestTopic = requestTopic;
        this.replyTopic = replyTopic;
        this.image = image;
        this.timeout = Duration.ofSeconds(timeoutS);
    }

    public static void main(String[] args) {
        System.exit(SpringApplication.exit(SpringApplication.run(CaptionApp.class, args)));
    }

    @Bean
    static ReplyingKafkaTemplate<String, GenericRecord, GenericRecord> replyingTemplate(
            ProducerFactory<String, GenericRecord> producers,
            ConcurrentKafkaListenerContainerFactory<String, GenericRecord> containers,
            @Value("${captioner.reply-topic}") String replyTopic, @Value("${captioner.reply-partition}") int partition) {
        ConcurrentMessageListenerContainer<String, GenericRecord> replies = partition < 0
                ? containers.createContainer(replyTopic)
                : containers.createContainer(
                        new TopicPartitionOffset(replyTopic, partition, TopicPartitionOffset.SeekPosition.END));
        replies.getContainerProperties().setGroupId("captioner-spring-example-" + UUID.randomUUID());
        return new ReplyingKafkaTemplate<>(producers, replies);
    }

    @Override
    public void run(ApplicationArguments args) throws Exception {
        if (!template.waitForAssignment(timeout)) {  // with auto.offset.reset=latest, a reply before it is missed
            throw new IllegalStateException("no reply partition assigned within " + timeout);
        }
        String correlationId = UUID.randomUUID().toString();
        Instant now = Instant.now();
        GenericRecord request = new GenericRecordBuilder(Schemas.REQUEST)
                .set("correlation_id", correlationId)
                .set("image", ByteBuffer.wrap(Files.readAllBytes(image)))
                .set("content_type", "application/octet-stream")  // the worker reads the format from the bytes
                .set("reply_topic", replyTopic)
                .set("reply_partition", null)
                .set("deadline", now.plus(timeout).toEpochMilli())
                .set("created_at", now.toEpochMilli())
                .set("max_new_tokens", null)
                .build();
        try {
            ConsumerRecord<String, GenericRecord> reply =
                    template.sendAndReceive(new ProducerRecord<>(requestTopic, correlationId, request), timeout).get();
            System.out.println(GenericData.get().toString(reply.value()));
            exitCode = "SUCCEEDED".equals(reply.value().get("status").toString()) ? 0 : 1;
        } catch (ExecutionException e) {
            if (!(e.getCause() instanceof KafkaReplyTimeoutException)) {
                throw e;
            }
            System.err.println("no reply for " + correlationId + " within " + timeout);
        }
    }

    @Override
    public int getExitCode() {
        return exitCode;
    }
}

package io.captioner.spring;

import java.io.IOException;

import org.apache.avro.AvroRuntimeException;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;

/** A CaptionReply written with any known reply schema version, read into the newest one (v1). */
public final class CaptionReplyDeserializer implements Deserializer<GenericRecord> {
    private final BinaryMessageDecoder<GenericRecord> decoder =
            new BinaryMessageDecoder<>(GenericData.get(), Schemas.REPLY);

    @Override
    public GenericRecord deserialize(String topic, byte[] data) {
        try {
            return data == null ? null : decoder.decode(data);
        } catch (IOException | AvroRuntimeException e) {
            throw new SerializationException("not a CaptionReply", e);
        }
    }
}

package io.captioner.spring;

import java.nio.ByteBuffer;
import java.util.Arrays;

import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Serializer;

/** A CaptionRequest in Avro's single-object encoding: C3 01, the schema's CRC-64-AVRO fingerprint, the body. */
public final class CaptionRequestSerializer implements Serializer<GenericRecord> {
    private final BinaryMessageEncoder<GenericRecord> encoder =
            new BinaryMessageEncoder<>(GenericData.get(), Schemas.REQUEST);

    @Override
    public byte[] serialize(String topic, GenericRecord request) {
        try {
            ByteBuffer encoded = encoder.encode(request);
            return Arrays.copyOfRange(encoded.array(), encoded.arrayOffset() + encoded.position(),
                    encoded.arrayOffset() + encoded.limit());
        } catch (java.io.IOException e) {
            throw new SerializationException("cannot encode a CaptionRequest", e);
        }
    }
}

package io.captioner.spring;

import java.io.IOException;
import java.io.InputStream;

import org.apache.avro.Schema;

/** The repository's schemas/v1, put on the classpath by the pom. */
final class Schemas {
    static final Schema REQUEST = load("schemas/v1/caption_request.avsc");
    static final Schema REPLY = load("schemas/v1/caption_reply.avsc");

    private Schemas() {}

    private static Schema load(String resource) {
        try (InputStream in = Schemas.class.getClassLoader().getResourceAsStream(resource)) {
            if (in == null) {
                throw new IllegalStateException(resource + " is not on the classpath");
            }
            return new Schema.Parser().parse(in);
        } catch (IOException e) {
            throw new IllegalStateException("cannot read " + resource, e);
        }
    }
}

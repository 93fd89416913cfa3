// Command captioner-go publishes one caption job with franz-go and prints its final reply as one JSON line,
// written from schemas/README.md alone. The single-object framing is done here, against the Parsing
// Canonical Forms that it prints: a library's own fingerprint is not trusted (see its warning).
// With -registry, the job goes in the Schema Registry's framing instead (franz-go's sr package), under
// caption_request.avsc (a copy of schemas/v1/caption_request.avsc) registered as <request topic>-value.
//
//	captioner-go [-registry URL] BOOTSTRAP REQUEST_TOPIC REPLY_TOPIC IMAGE TIMEOUT_S
//	    exit 0: SUCCEEDED; 1: FAILED (the reply is printed all the same); 2: no final reply in time; 64: usage
//	captioner-go encode CORRELATION_ID IMAGE CONTENT_TYPE REPLY_TOPIC DEADLINE_MS CREATED_AT_MS
//	    prints the hex of the request's single-object encoding (reply_partition, max_new_tokens null)
package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"
)

// Copied verbatim from schemas/README.md ("Parsing Canonical Forms"); the fingerprint is computed from them.
const (
	requestCanonical = `{"name":"io.captioner.v1.CaptionRequest","type":"record","fields":[{"name":"correlation_id","type":"string"},{"name":"image","type":"bytes"},{"name":"content_type","type":"string"},{"name":"reply_topic","type":"string"},{"name":"reply_partition","type":["null","int"]},{"name":"deadline","type":"long"},{"name":"created_at","type":"long"},{"name":"max_new_tokens","type":["null","int"]}]}`
	replyCanonical   = `{"name":"io.captioner.v1.CaptionReply","type":"record","fields":[{"name":"correlation_id","type":"string"},{"name":"status","type":{"name":"io.captioner.v1.ReplyStatus","type":"enum","symbols":["SUCCEEDED","FAILED","RETRYING","UNKNOWN"]}},{"name":"title","type":["null","string"]},{"name":"error","type":["null",{"name":"io.captioner.v1.ReplyError","type":"record","fields":[{"name":"code","type":"string"},{"name":"message","type":"string"},{"name":"retriable","type":"boolean"}]}]},{"name":"model","type":"string"},{"name":"worker_id","type":"string"},{"name":"attempt","type":"int"},{"name":"inference_ms","type":"double"},{"name":"completed_at","type":"long"}]}`
	maxRecordBytes   = 16 << 20 // the request topic's default max.message.bytes
)

//go:embed caption_request.avsc
var requestSchemaFile string

var (
	requestSchema = avro.MustParse(requestCanonical)
	replySchema   = avro.MustParse(replyCanonical)
	requestHeader = singleObjectHeader(requestCanonical)
	replyHeader   = singleObjectHeader(replyCanonical)
)

type CaptionRequest struct {
	CorrelationID  string `avro:"correlation_id"`
	Image          []byte `avro:"image"`
	ContentType    string `avro:"content_type"`
	ReplyTopic     string `avro:"reply_topic"`
	ReplyPartition *int32 `avro:"reply_partition"`
	Deadline       int64  `avro:"deadline"` // timestamp-millis
	CreatedAt      int64  `avro:"created_at"`
	MaxNewTokens   *int32 `avro:"max_new_tokens"`
}

type ReplyError struct {
	Code      string `avro:"code" json:"code"`
	Message   string `avro:"message" json:"message"`
	Retriable bool   `avro:"retriable" json:"retriable"`
}

type CaptionReply struct {
	CorrelationID string      `avro:"correlation_id" json:"correlation_id"`
	Status        string      `avro:"status" json:"status"`
	Title         *string     `avro:"title" json:"title"`
	Error         *ReplyError `avro:"error" json:"error"`
	Model         string      `avro:"model" json:"model"`
	WorkerID      string      `avro:"worker_id" json:"worker_id"`
	Attempt       int32       `avro:"attempt" json:"attempt"`
	InferenceMs   float64     `avro:"inference_ms" json:"inference_ms"`
	CompletedAt   int64       `avro:"completed_at" json:"completed_at"`
}

// singleObjectHeader is C3 01 and the CRC-64-AVRO (Rabin) fingerprint of a Parsing Canonical Form,
// little-endian: the Avro specification's algorithm.
func singleObjectHeader(canonical string) []byte {
	const empty = 0xc15d213aa4d7a795
	fingerprint := uint64(empty)
	for _, b := range []byte(canonical) {
		fingerprint ^= uint64(b)
		for range 8 {
			fingerprint = (fingerprint >> 1) ^ (empty & -(fingerprint & 1))
		}
	}
	return binary.LittleEndian.AppendUint64([]byte{0xc3, 0x01}, fingerprint)
}

func encodeRequest(request CaptionRequest) ([]byte, error) {
	body, err := avro.Marshal(requestSchema, request)
	return append(bytes.Clone(requestHeader), body...), err
}

// decodeReply refuses anything not framed with the reply schema: another writer's garbage is skipped.
func decodeReply(value []byte) (reply CaptionReply, err error) {
	if !bytes.HasPrefix(value, replyHeader) {
		return reply, errors.New("not a v1 CaptionReply")
	}
	err = avro.Unmarshal(replySchema, value[len(replyHeader):], &reply)
	return reply, err
}

// registry is the Schema Registry's framing (00, a 4-byte schema id, the body) through franz-go's Serde:
// requests under our schema's id; each reply id's writer schema fetched once, resolved to our reply schema.
type registry struct {
	client *sr.Client
	serde  *sr.Serde
}

func newRegistry(ctx context.Context, url, requestTopic string) (*registry, error) {
	client, err := sr.NewClient(sr.URLs(url))
	if err != nil {
		return nil, err
	}
	// The id the schema already has under the subject, else a new one (the subject's compatibility rules).
	schema := sr.Schema{Schema: requestSchemaFile, Type: sr.TypeAvro}
	id, err := client.RegisterSchema(ctx, requestTopic+"-value", schema, -1, -1)
	serde := sr.NewSerde()
	serde.Register(id, CaptionRequest{}, sr.EncodeFn(func(v any) ([]byte, error) {
		return avro.Marshal(requestSchema, v)
	}))
	return &registry{client, serde}, err
}

// encode writes in the registry's framing where there is one, else single-object.
func (r *registry) encode(request CaptionRequest) ([]byte, error) {
	if r == nil {
		return encodeRequest(request)
	}
	return r.serde.Encode(request)
}

// decode reads a reply in either framing, told apart by its first byte (without a registry, single-object
// only). An id the registry does not have, or whose schema is not a CaptionReply, is remembered as such:
// a record may name any id, and each costs one look-up.
func (r *registry) decode(ctx context.Context, value []byte) (reply CaptionReply, err error) {
	if r == nil || !bytes.HasPrefix(value, []byte{0}) {
		return decodeReply(value)
	}
	if err = r.serde.Decode(value, &reply); !errors.Is(err, sr.ErrNotRegistered) {
		return reply, err
	}
	id, _, _ := r.serde.DecodeID(value)
	writer, lookup := r.client.SchemaByID(ctx, id)
	var answered *sr.ResponseError
	if lookup != nil && !(errors.As(lookup, &answered) && answered.StatusCode == http.StatusNotFound) {
		return reply, lookup // no answer yet: the next record naming this id asks again
	}
	resolved, unreadable := resolveReply(writer.Schema, lookup)
	r.serde.Register(id, CaptionReply{}, sr.DecodeFn(func(body []byte, v any) error {
		if unreadable != nil {
			return unreadable
		}
		return avro.Unmarshal(resolved, body, v)
	}))
	return reply, r.serde.Decode(value, &reply)
}

// resolveReply is the schema a writer's body is read with: the writer's fields, resolved to our reply's.
func resolveReply(writerText string, lookup error) (avro.Schema, error) {
	if lookup != nil {
		return nil, lookup
	}
	writer, err := avro.ParseWithCache(writerText, "", &avro.SchemaCache{})
	if err != nil {
		return nil, err
	}
	return avro.NewSchemaCompatibility().Resolve(replySchema, writer)
}

func main() {
	flags := flag.NewFlagSet("captioner-go", flag.ContinueOnError) // a bad flag exits 64, not flag's 2
	registryURL := flags.String("registry", "", "a schema registry's Confluent-compatible API: publish in its framing")
	var args []string
	if flags.Parse(os.Args[1:]) == nil {
		args = flags.Args()
	}
	switch {
	case len(args) == 7 && args[0] == "encode":
		image, err := os.ReadFile(args[2])
		deadline, _ := strconv.ParseInt(args[5], 10, 64)
		created, _ := strconv.ParseInt(args[6], 10, 64)
		encoded, err2 := encodeRequest(CaptionRequest{args[1], image, args[3], args[4], nil, deadline, created, nil})
		exitOn(errors.Join(err, err2))
		fmt.Println(hex.EncodeToString(encoded))
	case len(args) == 5:
		seconds, err := strconv.Atoi(args[4])
		exitOn(err)
		os.Exit(caption(*registryURL, args[0], args[1], args[2], args[3], time.Duration(seconds)*time.Second))
	default:
		fmt.Fprintln(os.Stderr, "usage: captioner-go [-registry URL] BOOTSTRAP REQUEST_TOPIC REPLY_TOPIC IMAGE TIMEOUT_S")
		os.Exit(64)
	}
}

func caption(registryURL, bootstrap, requestTopic, replyTopic, imagePath string, timeout time.Duration) int {
	image, err := os.ReadFile(imagePath)
	exitOn(err)
	now := time.Now()
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(timeout))
	defer cancel()
	id := strconv.FormatInt(now.UnixNano(), 36) + strconv.Itoa(os.Getpid())
	request := CaptionRequest{
		CorrelationID: id, Image: image, ContentType: "application/octet-stream", ReplyTopic: replyTopic,
		Deadline: now.Add(timeout).UnixMilli(), CreatedAt: now.UnixMilli(),
	}
	var reg *registry
	if registryURL != "" {
		reg, err = newRegistry(ctx, registryURL, requestTopic)
		exitOn(err)
	}
	value, err := reg.encode(request)
	exitOn(err)
	// Every reply partition from its end as of now, fixed before the job is sent: the key picks the
	// reply's partition (reply_partition is null), and no reply can come before these offsets.
	admin, err := kgo.NewClient(kgo.SeedBrokers(bootstrap))
	exitOn(err)
	ends, err := kadm.NewClient(admin).ListEndOffsets(ctx, replyTopic)
	admin.Close()
	exitOn(errors.Join(err, ends.Error()))
	start := map[int32]kgo.Offset{}
	ends.Each(func(end kadm.ListedOffset) { start[end.Partition] = kgo.NewOffset().At(end.Offset) })
	client, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ProducerBatchMaxBytes(maxRecordBytes),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{replyTopic: start}))
	exitOn(err)
	defer client.Close()
	exitOn(client.ProduceSync(ctx, &kgo.Record{Topic: requestTopic, Key: []byte(id), Value: value}).FirstErr())
	fmt.Fprintf(os.Stderr, "sent %s\n", id)
	// At least once: RETRYING replies precede the final one, and a duplicate final reply may follow it.
	for ctx.Err() == nil {
		for _, record := range client.PollFetches(ctx).Records() {
			reply, err := reg.decode(ctx, record.Value)
			if err != nil {
				fmt.Fprintf(os.Stderr, "skipped a record that is not a reply: %v\n", err)
			}
			if err != nil || reply.CorrelationID != id {
				continue
			}
			line, _ := json.Marshal(reply)
			if reply.Status == "SUCCEEDED" || reply.Status == "FAILED" {
				fmt.Println(string(line))
				return map[bool]int{true: 0, false: 1}[reply.Status == "SUCCEEDED"]
			}
			fmt.Fprintf(os.Stderr, "not final yet: %s\n", line)
		}
	}
	fmt.Fprintf(os.Stderr, "no final reply for %s before its deadline\n", id)
	return 2
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(70)
	}
}

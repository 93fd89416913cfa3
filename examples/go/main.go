// Command captioner-go publishes one caption job with franz-go and prints its final reply as one JSON line,
// written from schemas/README.md alone. The single-object framing is done here, against the Parsing
// Canonical Forms that README prints: a library's own fingerprint is not trusted (see its warning).
//
//	captioner-go BOOTSTRAP REQUEST_TOPIC REPLY_TOPIC IMAGE TIMEOUT_S
//	    exit 0: SUCCEEDED; 1: FAILED (the reply is printed all the same); 2: no final reply in time; 64: usage
//	captioner-go encode CORRELATION_ID IMAGE CONTENT_TYPE REPLY_TOPIC DEADLINE_MS CREATED_AT_MS
//	    prints the hex of the request's single-object encoding (reply_partition, max_new_tokens null)
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Copied verbatim from schemas/README.md ("Parsing Canonical Forms"); the fingerprint is computed from them.
const (
	requestCanonical = `{"name":"io.captioner.v1.CaptionRequest","type":"record","fields":[{"name":"correlation_id","type":"string"},{"name":"image","type":"bytes"},{"name":"content_type","type":"string"},{"name":"reply_topic","type":"string"},{"name":"reply_partition","type":["null","int"]},{"name":"deadline","type":"long"},{"name":"created_at","type":"long"},{"name":"max_new_tokens","type":["null","int"]}]}`
	replyCanonical   = `{"name":"io.captioner.v1.CaptionReply","type":"record","fields":[{"name":"correlation_id","type":"string"},{"name":"status","type":{"name":"io.captioner.v1.ReplyStatus","type":"enum","symbols":["SUCCEEDED","FAILED","RETRYING","UNKNOWN"]}},{"name":"title","type":["null","string"]},{"name":"error","type":["null",{"name":"io.captioner.v1.ReplyError","type":"record","fields":[{"name":"code","type":"string"},{"name":"message","type":"string"},{"name":"retriable","type":"boolean"}]}]},{"name":"model","type":"string"},{"name":"worker_id","type":"string"},{"name":"attempt","type":"int"},{"name":"inference_ms","type":"double"},{"name":"completed_at","type":"long"}]}`
	maxRecordBytes   = 16 << 20 // the request topic's default max.message.bytes
)

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

func main() {
	args := os.Args[1:]
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
		os.Exit(caption(args[0], args[1], args[2], args[3], time.Duration(seconds)*time.Second))
	default:
		fmt.Fprintln(os.Stderr, "usage: captioner-go BOOTSTRAP REQUEST_TOPIC REPLY_TOPIC IMAGE TIMEOUT_S")
		os.Exit(64)
	}
}

func caption(bootstrap, requestTopic, replyTopic, imagePath string, timeout time.Duration) int {
	image, err := os.ReadFile(imagePath)
	exitOn(err)
	now := time.Now()
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(timeout))
	defer cancel()
	id := strconv.FormatInt(now.UnixNano(), 36) + strconv.Itoa(os.Getpid())
	value, err := encodeRequest(CaptionRequest{
		CorrelationID: id, Image: image, ContentType: "application/octet-stream", ReplyTopic: replyTopic,
		Deadline: now.Add(timeout).UnixMilli(), CreatedAt: now.UnixMilli(),
	})
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
			reply, err := decodeReply(record.Value)
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

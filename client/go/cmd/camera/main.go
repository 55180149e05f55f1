// Command camera is edgefleet's Go camera example: it opens a FrameStream, sends JPEG files as
// frames and prints one line per answer (result, drop or per-frame error).
//
//	camera [-json] HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]
//
// EDGEFLEET_TOKEN, when set, is sent as `authorization: Bearer <token>`. With -json it prints the
// conformance scenario's JSON lines (client/README.md, "Conformance") instead of text.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	edgefleetv1 "edgefleet/client/go/gen/edgefleet/v1"
)

func main() {
	os.Exit(run())
}

func run() int {
	jsonLines := flag.Bool("json", false, "print the conformance JSON lines instead of text")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: camera [-json] HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]")
	}
	flag.Parse()
	if flag.NArg() < 3 {
		flag.Usage()
		return 2
	}
	target, model, files := flag.Arg(0), flag.Arg(1), flag.Args()[2:]
	frames := make([][]byte, len(files))
	for i, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		frames[i] = data
	}
	out := textPrinter{}
	var printer printer = &out
	if *jsonLines {
		printer = jsonPrinter{}
	}

	// grpc-go 1.33 (Debian 12) predates credentials/insecure; WithInsecure is its plaintext option.
	conn, err := grpc.Dial(target, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer conn.Close()
	ctx := context.Background()
	if token := os.Getenv("EDGEFLEET_TOKEN"); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	stream, err := edgefleetv1.NewFrameStreamServiceClient(conn).Stream(ctx)
	if err != nil {
		return printer.finish(err, len(frames))
	}

	// Answers are read on their own goroutine so a full send window never blocks the reader.
	finished := make(chan error, 1)
	go func() {
		for {
			response, err := stream.Recv()
			if err == io.EOF {
				finished <- nil
				return
			}
			if err != nil {
				finished <- err
				return
			}
			printer.response(response)
		}
	}()

	// BLOCK: every frame of a recorded sequence is answered rather than dropped.
	err = stream.Send(&edgefleetv1.StreamRequest{Kind: &edgefleetv1.StreamRequest_Open{
		Open: &edgefleetv1.StreamOpen{
			ModelName:      model,
			Encoding:       edgefleetv1.FrameEncoding_FRAME_ENCODING_JPEG,
			OverloadPolicy: edgefleetv1.OverloadPolicy_OVERLOAD_POLICY_BLOCK,
			Results:        &edgefleetv1.ResultOptions{TopK: 3},
			StreamId:       "go-camera",
		},
	}})
	for i := 0; err == nil && i < len(frames); i++ {
		err = stream.Send(&edgefleetv1.StreamRequest{Kind: &edgefleetv1.StreamRequest_Frame{
			Frame: &edgefleetv1.Frame{
				Sequence:          uint64(i + 1),
				CaptureTimeUnixNs: time.Now().UnixNano(),
				Data:              frames[i],
			},
		}})
	}
	// A failed Send means the server ended the stream; Recv reports its status.
	_ = stream.CloseSend()
	return printer.finish(<-finished, len(frames))
}

type printer interface {
	response(*edgefleetv1.StreamResponse)
	// finish prints the stream's end and returns the exit code (0 when it ended OK).
	finish(err error, sent int) int
}

type textPrinter struct{ answered int }

func (p *textPrinter) response(response *edgefleetv1.StreamResponse) {
	switch kind := response.Kind.(type) {
	case *edgefleetv1.StreamResponse_Opened:
		fmt.Printf("opened stream=%s model=%s version=%s\n",
			kind.Opened.StreamId, kind.Opened.ModelName, kind.Opened.ModelVersion)
	case *edgefleetv1.StreamResponse_Result:
		labels := make([]string, len(kind.Result.Labels))
		for i, label := range kind.Result.Labels {
			labels[i] = fmt.Sprintf("%s (%.3f)", label.Label, label.Score)
		}
		fmt.Printf("frame %d %s/%s: %s\n", kind.Result.Sequence, kind.Result.ModelName,
			kind.Result.ModelVersion, strings.Join(labels, ", "))
		p.answered++
	case *edgefleetv1.StreamResponse_Dropped:
		sequences := make([]string, len(kind.Dropped.Sequences))
		for i, sequence := range kind.Dropped.Sequences {
			sequences[i] = fmt.Sprint(sequence)
		}
		fmt.Printf("dropped %s: %s\n", strings.Join(sequences, ","), kind.Dropped.Reason)
	case *edgefleetv1.StreamResponse_Error:
		fmt.Printf("frame %d error %d: %s\n", kind.Error.Sequence, kind.Error.Code, kind.Error.Message)
	}
}

func (p *textPrinter) finish(err error, sent int) int {
	if err != nil {
		s := status.Convert(err)
		fmt.Fprintf(os.Stderr, "stream failed: %s: %s\n", s.Code(), s.Message())
		return 1
	}
	fmt.Printf("done: %d/%d frames answered\n", p.answered, sent)
	return 0
}

// jsonPrinter writes the conformance lines, byte for byte what every other client writes.
type jsonPrinter struct{}

func (jsonPrinter) response(response *edgefleetv1.StreamResponse) {
	switch kind := response.Kind.(type) {
	case *edgefleetv1.StreamResponse_Opened:
		fmt.Printf("{\"opened\":%q}\n", kind.Opened.ModelName)
	case *edgefleetv1.StreamResponse_Result:
		classID := "null"
		if len(kind.Result.Labels) > 0 {
			classID = fmt.Sprint(kind.Result.Labels[0].ClassId)
		}
		fmt.Printf("{\"sequence\":%d,\"class_id\":%s,\"code\":0}\n", kind.Result.Sequence, classID)
	case *edgefleetv1.StreamResponse_Dropped:
		for _, sequence := range kind.Dropped.Sequences {
			fmt.Printf("{\"sequence\":%d,\"dropped\":true}\n", sequence)
		}
	case *edgefleetv1.StreamResponse_Error:
		fmt.Printf("{\"sequence\":%d,\"class_id\":null,\"code\":%d}\n", kind.Error.Sequence, kind.Error.Code)
	}
}

func (jsonPrinter) finish(err error, _ int) int {
	code := status.Code(err) // OK for nil
	fmt.Printf("{\"status\":%d}\n", code)
	if code != 0 {
		return 1
	}
	return 0
}

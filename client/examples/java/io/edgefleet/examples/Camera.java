// edgefleet's Java camera example: opens a FrameStream, sends JPEG files as frames and prints
// one line per answer (result, drop or per-frame error).
//   edgefleet_camera [--json] HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]
// EDGEFLEET_TOKEN, when set, is sent as `authorization: Bearer <token>`. With --json it prints
// the conformance scenario's JSON lines (client/README.md, "Conformance") instead of text.
package io.edgefleet.examples;

import com.google.protobuf.ByteString;
import io.edgefleet.v1.Frame;
import io.edgefleet.v1.FrameEncoding;
import io.edgefleet.v1.FrameStreamServiceGrpc;
import io.edgefleet.v1.Label;
import io.edgefleet.v1.OverloadPolicy;
import io.edgefleet.v1.ResultOptions;
import io.edgefleet.v1.StreamOpen;
import io.edgefleet.v1.StreamRequest;
import io.edgefleet.v1.StreamResponse;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;

public final class Camera {
  private Camera() {}

  public static void main(String[] args) throws Exception {
    System.exit(run(args));
  }

  static int run(String[] args) throws Exception {
    int first = 0;
    boolean json = args.length > 0 && args[0].equals("--json");
    if (json) {
      first = 1;
    }
    if (args.length - first < 3) {
      System.err.println("usage: edgefleet_camera [--json] HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]");
      return 2;
    }
    String target = args[first];
    String model = args[first + 1];
    List<ByteString> frames = new ArrayList<>();
    for (int i = first + 2; i < args.length; i++) {
      try {
        frames.add(ByteString.copyFrom(Files.readAllBytes(Paths.get(args[i]))));
      } catch (IOException e) {
        System.err.println(args[i] + ": cannot read: " + e.getMessage());
        return 2;
      }
    }

    ManagedChannel channel = NettyChannelBuilder.forTarget(target).usePlaintext().build();
    try {
      FrameStreamServiceGrpc.FrameStreamServiceStub stub = FrameStreamServiceGrpc.newStub(channel);
      String token = System.getenv("EDGEFLEET_TOKEN");
      if (token != null && !token.isEmpty()) {
        Metadata headers = new Metadata();
        headers.put(
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + token);
        stub = stub.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
      }
      Printer printer = json ? new JsonPrinter() : new TextPrinter();
      CompletableFuture<Status> finished = new CompletableFuture<>();
      StreamObserver<StreamRequest> requests =
          stub.stream(
              new StreamObserver<StreamResponse>() {
                @Override
                public void onNext(StreamResponse response) {
                  printer.response(response);
                }

                @Override
                public void onError(Throwable error) {
                  finished.complete(Status.fromThrowable(error));
                }

                @Override
                public void onCompleted() {
                  finished.complete(Status.OK);
                }
              });

      // BLOCK: every frame of a recorded sequence is answered rather than dropped. grpc-java
      // queues writes without blocking; a long-running camera should send only while the call
      // isReady() (ClientCallStreamObserver.setOnReadyHandler) to keep its memory bounded.
      requests.onNext(
          StreamRequest.newBuilder()
              .setOpen(
                  StreamOpen.newBuilder()
                      .setModelName(model)
                      .setEncoding(FrameEncoding.FRAME_ENCODING_JPEG)
                      .setOverloadPolicy(OverloadPolicy.OVERLOAD_POLICY_BLOCK)
                      .setResults(ResultOptions.newBuilder().setTopK(3))
                      .setStreamId("java-camera"))
              .build());
      for (int i = 0; i < frames.size() && !finished.isDone(); i++) {
        long nowNs = TimeUnit.MILLISECONDS.toNanos(System.currentTimeMillis());
        requests.onNext(
            StreamRequest.newBuilder()
                .setFrame(
                    Frame.newBuilder()
                        .setSequence(i + 1)
                        .setCaptureTimeUnixNs(nowNs)
                        .setData(frames.get(i)))
                .build());
      }
      if (!finished.isDone()) {
        requests.onCompleted();
      }
      return printer.finish(finished.get(120, TimeUnit.SECONDS), frames.size());
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  private interface Printer {
    void response(StreamResponse response);

    /** Prints the stream's end; returns the exit code (0 when it ended OK). */
    int finish(Status status, int sent);
  }

  private static final class TextPrinter implements Printer {
    private int answered;

    @Override
    public synchronized void response(StreamResponse response) {
      switch (response.getKindCase()) {
        case OPENED:
          System.out.printf(
              "opened stream=%s model=%s version=%s%n",
              response.getOpened().getStreamId(),
              response.getOpened().getModelName(),
              response.getOpened().getModelVersion());
          break;
        case RESULT:
          String labels =
              response.getResult().getLabelsList().stream()
                  .map(l -> String.format("%s (%.3f)", l.getLabel(), l.getScore()))
                  .collect(Collectors.joining(", "));
          System.out.printf(
              "frame %d %s/%s: %s%n",
              response.getResult().getSequence(),
              response.getResult().getModelName(),
              response.getResult().getModelVersion(),
              labels);
          answered++;
          break;
        case DROPPED:
          System.out.printf(
              "dropped %s: %s%n",
              response.getDropped().getSequencesList().stream()
                  .map(String::valueOf)
                  .collect(Collectors.joining(",")),
              response.getDropped().getReason());
          break;
        case ERROR:
          System.out.printf(
              "frame %d error %d: %s%n",
              response.getError().getSequence(),
              response.getError().getCode(),
              response.getError().getMessage());
          break;
        default:
          break;
      }
    }

    @Override
    public synchronized int finish(Status status, int sent) {
      if (!status.isOk()) {
        System.err.printf(
            "stream failed: %s: %s%n", status.getCode(), status.getDescription());
        return 1;
      }
      System.out.printf("done: %d/%d frames answered%n", answered, sent);
      return 0;
    }
  }

  /** The conformance lines, byte for byte what every other client writes. */
  private static final class JsonPrinter implements Printer {
    @Override
    public synchronized void response(StreamResponse response) {
      switch (response.getKindCase()) {
        case OPENED:
          // Model names are plain identifiers; no JSON escaping needed beyond quotes.
          System.out.printf("{\"opened\":\"%s\"}%n", response.getOpened().getModelName());
          break;
        case RESULT:
          List<Label> labels = response.getResult().getLabelsList();
          System.out.printf(
              "{\"sequence\":%d,\"class_id\":%s,\"code\":0}%n",
              response.getResult().getSequence(),
              labels.isEmpty() ? "null" : String.valueOf(labels.get(0).getClassId()));
          break;
        case DROPPED:
          for (long sequence : response.getDropped().getSequencesList()) {
            System.out.printf("{\"sequence\":%d,\"dropped\":true}%n", sequence);
          }
          break;
        case ERROR:
          System.out.printf(
              "{\"sequence\":%d,\"class_id\":null,\"code\":%d}%n",
              response.getError().getSequence(), response.getError().getCode());
          break;
        default:
          break;
      }
    }

    @Override
    public synchronized int finish(Status status, int sent) {
      System.out.printf("{\"status\":%d}%n", status.getCode().value());
      return status.isOk() ? 0 : 1;
    }
  }
}

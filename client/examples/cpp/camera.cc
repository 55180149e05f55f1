// Minimal edgefleet camera client in C++: opens a FrameStream, sends JPEG files as frames and
// prints one line per answer (result, drop or per-frame error).
// Usage: edgefleet_camera [--json] HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]
// EDGEFLEET_TOKEN, when set, is sent as `authorization: Bearer <token>`. With --json it prints
// the conformance scenario's JSON lines (client/README.md, "Conformance") instead of text.
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "edgefleet/v1/frame_stream.grpc.pb.h"

namespace v1 = edgefleet::v1;

namespace {

bool ReadFile(const std::string& path, std::string* contents) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return false;
  contents->assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  return true;
}

int64_t NowUnixNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Detections (boxes in source pixels), one indented line each, children one level deeper.
void PrintDetections(const google::protobuf::RepeatedPtrField<v1::Detection>& detections,
                     const std::string& indent) {
  for (const auto& d : detections) {
    std::ostringstream line;  // its own stream: std::cout's number format stays untouched
    line << indent << "detection "
         << (d.label().empty() ? std::to_string(d.class_id()) : d.label()) << " " << std::fixed
         << std::setprecision(3) << d.score() << std::setprecision(0) << " box=" << d.x_min()
         << "," << d.y_min() << "," << d.x_max() << "," << d.y_max();
    if (!d.text().empty()) line << " text=\"" << d.text() << "\"";
    if (d.keypoints_size() > 0) {
      line << " keypoints=";
      for (int i = 0; i < d.keypoints_size(); ++i) {
        const auto& k = d.keypoints(i);
        line << (i ? " " : "") << k.name() << "@" << k.x() << "," << k.y();
      }
    }
    std::cout << line.str() << std::endl;
    PrintDetections(d.children(), indent + "  ");
  }
}

void PrintText(const v1::StreamResponse& response, int* answered) {
  switch (response.kind_case()) {
    case v1::StreamResponse::kOpened:
      std::cout << "opened stream=" << response.opened().stream_id()
                << " model=" << response.opened().model_name()
                << " version=" << response.opened().model_version() << std::endl;
      break;
    case v1::StreamResponse::kResult: {
      const auto& result = response.result();
      std::ostringstream labels;
      for (int i = 0; i < result.labels_size(); ++i) {
        if (i) labels << ", ";
        labels << result.labels(i).label() << " (" << std::fixed << std::setprecision(3)
               << result.labels(i).score() << ")";
      }
      std::cout << "frame " << result.sequence() << " " << result.model_name() << "/"
                << result.model_version() << ": " << labels.str() << std::endl;
      PrintDetections(result.detections(), "  ");
      ++*answered;
      break;
    }
    case v1::StreamResponse::kDropped: {
      std::ostringstream sequences;
      for (int i = 0; i < response.dropped().sequences_size(); ++i) {
        if (i) sequences << ",";
        sequences << response.dropped().sequences(i);
      }
      std::cout << "dropped " << sequences.str() << ": " << response.dropped().reason()
                << std::endl;
      break;
    }
    case v1::StreamResponse::kError:
      std::cout << "frame " << response.error().sequence() << " error "
                << response.error().code() << ": " << response.error().message() << std::endl;
      break;
    default:
      break;
  }
}

// The conformance lines, byte for byte what every other client writes. Model names are plain
// identifiers, so quoting them needs no escaping.
void PrintJson(const v1::StreamResponse& response) {
  switch (response.kind_case()) {
    case v1::StreamResponse::kOpened:
      std::cout << "{\"opened\":\"" << response.opened().model_name() << "\"}" << std::endl;
      break;
    case v1::StreamResponse::kResult: {
      const auto& result = response.result();
      std::cout << "{\"sequence\":" << result.sequence() << ",\"class_id\":";
      if (result.labels_size() > 0) {
        std::cout << result.labels(0).class_id();
      } else {
        std::cout << "null";
      }
      std::cout << ",\"code\":0}" << std::endl;
      break;
    }
    case v1::StreamResponse::kDropped:
      for (const auto sequence : response.dropped().sequences()) {
        std::cout << "{\"sequence\":" << sequence << ",\"dropped\":true}" << std::endl;
      }
      break;
    case v1::StreamResponse::kError:
      std::cout << "{\"sequence\":" << response.error().sequence()
                << ",\"class_id\":null,\"code\":" << response.error().code() << "}" << std::endl;
      break;
    default:
      break;
  }
}

void PrintResponses(grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>* stream,
                    bool json, int* answered) {
  v1::StreamResponse response;
  while (stream->Read(&response)) {
    if (json) {
      PrintJson(response);
    } else {
      PrintText(response, answered);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool json = argc > 1 && std::string(argv[1]) == "--json";
  const int first = json ? 2 : 1;
  if (argc - first < 3) {
    std::cerr << "usage: " << argv[0] << " [--json] HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]\n";
    return 2;
  }
  const std::string target = argv[first];
  const std::string model = argv[first + 1];
  std::vector<std::string> frames;
  for (int i = first + 2; i < argc; ++i) {
    std::string data;
    if (!ReadFile(argv[i], &data)) {
      std::cerr << argv[i] << ": cannot read\n";
      return 2;
    }
    frames.push_back(std::move(data));
  }

  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = v1::FrameStreamService::NewStub(channel);
  grpc::ClientContext context;
  if (const char* token = std::getenv("EDGEFLEET_TOKEN")) {
    context.AddMetadata("authorization", std::string("Bearer ") + token);
  }
  auto stream = stub->Stream(&context);

  // Results are read on their own thread so a full send window never deadlocks the writer.
  int answered = 0;
  std::thread reader(PrintResponses, stream.get(), json, &answered);

  v1::StreamRequest open;
  open.mutable_open()->set_model_name(model);
  open.mutable_open()->set_encoding(v1::FRAME_ENCODING_JPEG);
  // BLOCK: every frame of a recorded sequence is answered rather than dropped.
  open.mutable_open()->set_overload_policy(v1::OVERLOAD_POLICY_BLOCK);
  open.mutable_open()->mutable_results()->set_top_k(3);
  open.mutable_open()->set_stream_id("cpp-camera");
  bool writing = stream->Write(open);
  for (size_t i = 0; writing && i < frames.size(); ++i) {
    v1::StreamRequest request;
    request.mutable_frame()->set_sequence(i + 1);
    request.mutable_frame()->set_capture_time_unix_ns(NowUnixNs());
    request.mutable_frame()->set_data(frames[i]);
    writing = stream->Write(request);
  }
  stream->WritesDone();
  reader.join();
  const grpc::Status status = stream->Finish();
  if (json) {
    std::cout << "{\"status\":" << status.error_code() << "}" << std::endl;
    return status.ok() ? 0 : 1;
  }
  if (!status.ok()) {
    std::cerr << "stream failed: code " << status.error_code() << ": " << status.error_message()
              << std::endl;
    return 1;
  }
  std::cout << "done: " << answered << "/" << frames.size() << " frames answered" << std::endl;
  return 0;
}

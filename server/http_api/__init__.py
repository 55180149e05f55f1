"""KServe v2 HTTP/REST transport over InferenceCore."""

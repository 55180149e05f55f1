#!/usr/bin/env node
// Minimal edgefleet camera client: opens a FrameStream, sends JPEG files as frames, prints
// one line per result. Usage: node camera.js HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]
// EDGEFLEET_TOKEN, when set, is sent as `authorization: Bearer <token>`.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = process.env.EDGEFLEET_PROTOS || path.resolve(__dirname, '../../../protos');

function loadService() {
  const definition = protoLoader.loadSync('edgefleet/v1/frame_stream.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).edgefleet.v1.FrameStreamService;
}

function main(argv) {
  if (argv.length < 3) {
    console.error('usage: camera.js HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]');
    return 2;
  }
  const [target, model, ...images] = argv;
  const frames = images.map((file) => fs.readFileSync(file));
  const FrameStreamService = loadService();
  const client = new FrameStreamService(target, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (process.env.EDGEFLEET_TOKEN) {
    metadata.set('authorization', `Bearer ${process.env.EDGEFLEET_TOKEN}`);
  }

  const call = client.Stream(metadata);
  let answered = 0;
  call.on('data', (response) => {
    switch (response.kind) {
      case 'opened':
        console.log(`opened stream=${response.opened.stream_id} model=${response.opened.model_name}` +
          ` version=${response.opened.model_version}`);
        break;
      case 'result': {
        const result = response.result;
        const labels = result.labels.map((l) => `${l.label} (${l.score.toFixed(3)})`).join(', ');
        console.log(`frame ${result.sequence} ${result.model_name}/${result.model_version}: ${labels}`);
        answered += 1;
        break;
      }
      case 'dropped':
        console.log(`dropped ${response.dropped.sequences.join(',')}: ${response.dropped.reason}`);
        break;
      case 'error':
        console.log(`frame ${response.error.sequence} error ${response.error.code}: ${response.error.message}`);
        break;
      default:
        break;
    }
  });
  call.on('error', (error) => {
    console.error(`stream failed: ${grpc.status[error.code]}: ${error.details}`);
    process.exitCode = 1;
  });
  call.on('end', () => {
    console.log(`done: ${answered}/${frames.length} frames answered`);
    client.close();
  });

  // BLOCK: the server answers every frame of a recorded sequence rather than dropping any.
  call.write({
    open: {
      model_name: model,
      encoding: 'FRAME_ENCODING_JPEG',
      overload_policy: 'OVERLOAD_POLICY_BLOCK',
      results: { top_k: 3 },
      stream_id: 'node-camera',
    },
  });
  frames.forEach((data, index) => {
    call.write({
      frame: {
        sequence: String(index + 1),
        capture_time_unix_ns: (BigInt(Date.now()) * 1000000n).toString(),
        data,
      },
    });
  });
  call.end();
  return 0;
}

process.exitCode = main(process.argv.slice(2));

#!/usr/bin/env node
// Minimal edgefleet camera client: opens a FrameStream, sends JPEG files as frames, prints
// one line per answer (result, drop or per-frame error).
// Usage: node camera.js [--json] HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]
// EDGEFLEET_TOKEN, when set, is sent as `authorization: Bearer <token>`. With --json it prints
// the conformance scenario's JSON lines (client/README.md, "Conformance") instead of text.
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

// Detections (boxes in source pixels), one indented line each, children one level deeper.
function printDetections(detections, indent) {
  for (const d of detections) {
    const box = [d.x_min, d.y_min, d.x_max, d.y_max].map((v) => Math.round(v)).join(',');
    const text = d.text ? ` text=${JSON.stringify(d.text)}` : '';
    const points = (d.keypoints || []).map((k) => `${k.name}@${Math.round(k.x)},${Math.round(k.y)}`);
    const keypoints = points.length ? ` keypoints=${points.join(' ')}` : '';
    console.log(`${indent}detection ${d.label || d.class_id} ${d.score.toFixed(3)} box=${box}${text}${keypoints}`);
    printDetections(d.children || [], `${indent}  `);
  }
}

// Text: one human-readable line per answer, then `done: N/M frames answered`.
function textPrinter(sent) {
  let answered = 0;
  return {
    response(response) {
      switch (response.kind) {
        case 'opened':
          console.log(`opened stream=${response.opened.stream_id} model=${response.opened.model_name}` +
            ` version=${response.opened.model_version}`);
          break;
        case 'result': {
          const result = response.result;
          const labels = result.labels.map((l) => `${l.label} (${l.score.toFixed(3)})`).join(', ');
          console.log(`frame ${result.sequence} ${result.model_name}/${result.model_version}: ${labels}`);
          printDetections(result.detections || [], '  ');
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
    },
    finish(error) {
      if (error) {
        console.error(`stream failed: ${grpc.status[error.code]}: ${error.details}`);
        return 1;
      }
      console.log(`done: ${answered}/${sent} frames answered`);
      return 0;
    },
  };
}

// --json: the conformance lines (client/README.md, "Conformance"), byte for byte what every other
// client writes.
function jsonPrinter() {
  return {
    response(response) {
      switch (response.kind) {
        case 'opened':
          console.log(JSON.stringify({ opened: response.opened.model_name }));
          break;
        case 'result': {
          const top = response.result.labels[0];
          console.log(JSON.stringify({
            sequence: Number(response.result.sequence),
            class_id: top ? top.class_id : null,
            code: 0,
          }));
          break;
        }
        case 'dropped':
          response.dropped.sequences.forEach((sequence) => {
            console.log(JSON.stringify({ sequence: Number(sequence), dropped: true }));
          });
          break;
        case 'error':
          console.log(JSON.stringify({
            sequence: Number(response.error.sequence), class_id: null, code: response.error.code,
          }));
          break;
        default:
          break;
      }
    },
    finish(error) {
      console.log(JSON.stringify({ status: error ? error.code : 0 }));
      return error ? 1 : 0;
    },
  };
}

function main(argv) {
  const json = argv[0] === '--json';
  if (json) {
    argv = argv.slice(1);
  }
  if (argv.length < 3) {
    console.error('usage: camera.js [--json] HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]');
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

  const printer = json ? jsonPrinter() : textPrinter(frames.length);
  const call = client.Stream(metadata);
  let finished = false;
  const finish = (error) => {
    if (!finished) {
      finished = true;
      process.exitCode = printer.finish(error);
      client.close();
    }
  };
  call.on('data', (response) => printer.response(response));
  call.on('error', (error) => finish(error));
  call.on('end', () => finish(null));

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
  return undefined;
}

const code = main(process.argv.slice(2));
if (code !== undefined) {
  process.exitCode = code;
}

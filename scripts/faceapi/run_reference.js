#!/usr/bin/env node
/*
 * Reference run of face-api.js's FaceExpressionNet (@vladmandic/face-api, tfjs cpu backend),
 * fully offline, on face crops stored as .npy files. Used to check the PyTorch port in
 * cage_cli/models/faceapi.py (see scripts/convert_faceapi_expression.py for the whole recipe).
 * With --net recognition it runs FaceRecognitionNet instead (150x150 input, the same padding,
 * resize and mean subtraction) and writes `descriptors` (128 floats per crop), the reference for
 * cage_cli/models/faceapi_recognition.py (scripts/convert_faceapi_recognition.py).
 *
 *   cd scripts/faceapi && npm ci
 *   node run_reference.js --out probs.json [--net expression|recognition]
 *        [--dump-input input.npy] crops.npy [more.npy ...]
 *
 * Each .npy holds uint8 RGB crops: (N, H, W, 3) or one (H, W, 3) crop. Every crop goes through
 * face-api's own FaceExpressionNet.forwardInput: NetInput.toBatchTensor(112, true) (centred
 * zero padding to a square, tf.image.resizeBilinear to 112 when the size differs), mean RGB
 * subtraction, /255, the dense blocks, the fc layer and softmax. 112x112 crops reach the net
 * unchanged. The JSON has one row per crop, in input order: `logits` and `probabilities`
 * (native order: neutral, happy, sad, angry, fearful, disgusted, surprised).
 * --dump-input writes the float32 (N, 112, 112, 3) batch tensor face-api builds (before the
 * mean subtraction), to check our own preprocessing against it.
 *
 * The model files are read from --model-dir (default: the installed package's model/ folder);
 * nothing is fetched over the network.
 */
'use strict';

const fs = require('fs');
const path = require('path');

// ---- tiny .npy reader / writer (uint8 and little-endian float32 only) ----------------------

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.readUInt32BE(0) !== 0x934e554d || buf.toString('latin1', 4, 6) !== 'PY') {
    throw new Error(`${file}: not a .npy file`);
  }
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const headerStart = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', headerStart, headerStart + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)[1] === 'True';
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',')
    .map((s) => s.trim()).filter((s) => s.length).map(Number);
  if (fortran) throw new Error(`${file}: fortran order is not supported`);
  if (descr !== '|u1') throw new Error(`${file}: expected uint8 crops, got ${descr}`);
  const start = headerStart + headerLen;
  const data = new Uint8Array(buf.buffer, buf.byteOffset + start, buf.length - start);
  return { shape, data };
}

function writeNpyFloat32(file, shape, values) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const pre = Buffer.alloc(10);
  pre.writeUInt32BE(0x934e554d, 0);
  pre.write('PY', 4, 'latin1');
  pre[6] = 1;
  pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  const body = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  fs.writeFileSync(file, Buffer.concat([pre, Buffer.from(header, 'latin1'), body]));
}

// ---- arguments -------------------------------------------------------------------------------

function parseArgs(argv) {
  const args = {
    out: null, dumpInput: null, modelDir: null, batch: 16, net: 'expression', inputs: [],
  };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === '--out') args.out = argv[++i];
    else if (a === '--dump-input') args.dumpInput = argv[++i];
    else if (a === '--model-dir') args.modelDir = argv[++i];
    else if (a === '--batch') args.batch = Number(argv[++i]);
    else if (a === '--net') args.net = argv[++i];
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else args.inputs.push(a);
  }
  if (!args.out || !args.inputs.length) {
    throw new Error('usage: run_reference.js --out OUT.json [--dump-input IN.npy] '
      + '[--model-dir DIR] [--batch N] [--net expression|recognition] crops.npy [...]');
  }
  if (!['expression', 'recognition'].includes(args.net)) {
    throw new Error(`unknown --net ${args.net} (expression, recognition)`);
  }
  return args;
}

// ---- main ------------------------------------------------------------------------------------

async function main() {
  const args = parseArgs(process.argv.slice(2));
  // The node-wasm bundle re-exports @tensorflow/tfjs (which brings the pure-JS cpu backend);
  // the package's ESM bundle does not start under Node 20.
  const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
  const { tf } = faceapi;
  await tf.setBackend('cpu');
  await tf.ready();

  const modelDir = args.modelDir
    || path.join(path.dirname(require.resolve('@vladmandic/face-api/package.json')), 'model');
  const recognition = args.net === 'recognition';
  const size = recognition ? 150 : 112;
  const manifestName = recognition ? 'face_recognition_model-weights_manifest.json'
    : 'face_expression_model-weights_manifest.json';
  const manifest = JSON.parse(fs.readFileSync(path.join(modelDir, manifestName), 'utf8'));
  const specs = [];
  const shards = [];
  for (const group of manifest) {
    specs.push(...group.weights);
    for (const p of group.paths) shards.push(fs.readFileSync(path.join(modelDir, p)));
  }
  const bin = Buffer.concat(shards);
  const weightMap = tf.io.decodeWeights(
    bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength), specs,
  );
  const net = recognition ? new faceapi.FaceRecognitionNet() : new faceapi.FaceExpressionNet();
  net.loadFromWeightMap(weightMap);

  // Every crop as one int32 Tensor3D, the way face-api's tensor inputs look.
  const crops = [];
  for (const file of args.inputs) {
    const { shape, data } = readNpy(file);
    if (shape.length === 3) {
      crops.push(tf.tensor3d(Int32Array.from(data), shape, 'int32'));
    } else if (shape.length === 4) {
      const [n, h, w, c] = shape;
      const size = h * w * c;
      for (let i = 0; i < n; i += 1) {
        crops.push(tf.tensor3d(Int32Array.from(data.subarray(i * size, (i + 1) * size)), [h, w, c], 'int32'));
      }
    } else {
      throw new Error(`${file}: expected (N, H, W, 3) or (H, W, 3), got (${shape})`);
    }
  }

  const logits = [];
  const probabilities = [];
  const descriptors = [];
  const dumped = args.dumpInput ? new Float32Array(crops.length * size * size * 3) : null;
  for (let start = 0; start < crops.length; start += args.batch) {
    const chunk = crops.slice(start, start + args.batch);
    const netInput = await faceapi.toNetInput(chunk);
    if (dumped) {
      const batch = netInput.toBatchTensor(size, true);
      dumped.set(batch.dataSync(), start * size * size * 3);
      batch.dispose();
    }
    if (recognition) {
      const d = net.forwardInput(netInput); // (batch, 128), what computeFaceDescriptor returns
      descriptors.push(...d.arraySync());
      d.dispose();
      continue;
    }
    const lg = net.runNet(netInput); // fc output, before softmax
    const pr = net.forwardInput(netInput); // face-api's softmax probabilities
    logits.push(...lg.arraySync());
    probabilities.push(...pr.arraySync());
    lg.dispose();
    pr.dispose();
  }
  crops.forEach((t) => t.dispose());

  if (dumped) writeNpyFloat32(args.dumpInput, [crops.length, size, size, 3], dumped);
  const result = {
    net: args.net,
    backend: tf.getBackend(),
    versions: { faceapi: faceapi.version, tfjs: tf.version_core },
    inputs: args.inputs.map((f) => path.basename(f)),
    ...(recognition ? { descriptors }
      : { labels: faceapi.FACE_EXPRESSION_LABELS, logits, probabilities }),
  };
  fs.writeFileSync(args.out, JSON.stringify(result));
  console.log(`${crops.length} crops -> ${args.out} (backend ${result.backend}, face-api ${result.versions.faceapi}, tfjs ${result.versions.tfjs})`);
}

main().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});

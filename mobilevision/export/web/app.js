// mobilevision web page: the exported model in MediaPipe Tasks for Web, on images and the camera.
//
// The page's facts (task, labels, colours, model files, input size, where MediaPipe comes from)
// are the JSON in <script id="config">, written by mobilevision/export/web at export time.
//
// Every image is prepared as mobilevision's `predict` prepares it, here, and MediaPipe is handed
// an image of exactly the model's input size (a detector's enlarged by a whole factor, see
// `prepareDetection`), so its own resizing changes no pixel and the page computes what LiteRT
// computes in Python on the same file.
//
// Test hook: index.html?image=URL[&model=int8] runs that one image, writes predict's JSON for it
// into <script id="results"> (segmentation: the label map run-length encoded into
// <script id="mask">), then sets data-done="1" on <body>.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const config = JSON.parse($("config").textContent);
  const query = new URLSearchParams(location.search);
  const [IN_H, IN_W] = config.inputSize;
  const DISPLAY_MIN_SIDE = 512; // smaller images are enlarged (nearest) to draw on, as plots.py
  const MAX_DETECTOR_SIDE = 4096; // the largest image handed to the detector
  const OVERLAY_ALPHA = 0.6; // plots.overlay_mask's
  const PAD_VALUE = 127.5; // segmentation's padding, predict's (128 once rounded, as a uint8 file)
  const MAX_LISTED = 20; // detections listed beside the image

  const state = {
    runtime: null, // Promise<{vision, fileset}>
    runners: {}, // variant -> Promise<MediaPipe task>
    variant: null,
    current: null, // {getPixels, file}: the last image asked for, run again on a model switch
    camera: null, // {stream, frames, stamps}
    queue: Promise.resolve(), // runs one at a time
    timings: {}, // performance.now() of load milestones, for benchmarks/web_speed.py
    warm: new Set(), // "variant WxH" of the inputs MediaPipe has run on
  };

  // -- messages ----------------------------------------------------------------------------------

  function showMessage(text, kind = "error") {
    const m = $("message");
    const line = String(text).split("\n")[0].slice(0, 300); // one line, whatever the error was
    m.textContent = line;
    m.title = String(text);
    m.className = kind;
    m.hidden = false;
  }

  function clearMessage() {
    $("message").hidden = true;
  }

  function errorText(e) {
    return e && e.message ? e.message : String(e);
  }

  function clamp(v, lo, hi) {
    return Math.min(Math.max(v, lo), hi);
  }

  // -- MediaPipe ---------------------------------------------------------------------------------

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error(`could not load MediaPipe Tasks from ${src}`));
      document.head.append(s);
    });
  }

  function runtime() {
    if (!state.runtime) {
      state.runtime = (async () => {
        const { bundle, wasm } = config.runtime;
        await loadScript(bundle);
        if (!window.Vision) throw new Error(`${bundle} did not define MediaPipe's Vision`);
        const fileset = await window.Vision.FilesetResolver.forVisionTasks(
          new URL(wasm, location.href).href);
        state.timings.runtimeReady = performance.now();
        return { vision: window.Vision, fileset };
      })();
      state.runtime.catch(() => { state.runtime = null; }); // a later action tries again
    }
    return state.runtime;
  }

  function runner(variant) {
    if (!state.runners[variant]) {
      state.runners[variant] = (async () => {
        const file = config.models[variant];
        if (!file) throw new Error(`this page has no ${variant} model`);
        const { vision, fileset } = await runtime();
        const common = { baseOptions: { modelAssetPath: file, delegate: "CPU" },
                         runningMode: "IMAGE" };
        let task;
        try {
          if (config.task === "detection") {
            // Every detection the file returns (its own score threshold already applied).
            task = await vision.ObjectDetector.createFromOptions(
              fileset, { ...common, scoreThreshold: 0, maxResults: -1 });
          } else if (config.task === "classification") {
            task = await vision.ImageClassifier.createFromOptions(
              fileset, { ...common, maxResults: -1 });
          } else {
            task = await vision.ImageSegmenter.createFromOptions(
              fileset, { ...common, outputConfidenceMasks: true, outputCategoryMask: false });
          }
          // One call on a grey input: MediaPipe's first call sets its graph up (a few hundred
          // ms), which would otherwise be shown as the first image's inference time.
          const grey = new ImageData(IN_W, IN_H);
          grey.data.fill(128);
          const out = mediapipeCall(task, grey);
          if (config.task === "segmentation") out.close();
          state.warm.add(`${variant} ${IN_W}x${IN_H}`);
        } catch (e) {
          throw new Error(`could not load the ${variant} model ${file}: ${errorText(e)}`);
        }
        state.timings[`modelReady_${variant}`] = performance.now();
        return task;
      })();
      state.runners[variant].catch(() => { delete state.runners[variant]; });
    }
    return state.runners[variant];
  }

  // -- preprocessing: what predict does ----------------------------------------------------------
  //
  // predict (mobilevision/inference.py, ops/resize.py) resizes in float32: bilinear with
  // half-pixel centres (OpenCV's INTER_LINEAR), and for a classifier's downscaling TensorFlow's
  // antialiased triangle weights. The page repeats that arithmetic in float32 (Math.fround after
  // every operation) and rounds the result to 8 bits half to even (what a Uint8ClampedArray does
  // on assignment, as numpy's round): the pixels MediaPipe is handed are predict's, rounded. (The
  // files answer differently to an input one level apart in a few pixels, an int8 file and a
  // random test model by much; OpenCV's IPP kernels round their last bits their own way, so
  // where predict's value lies within about 1e-3 of a half, a few pixels in ten thousand, the
  // page may round it the other way.)

  const f32 = Math.fround;

  // Bilinear resize, half-pixel centres, the edge pixel repeated past the border, no
  // antialiasing (OpenCV's INTER_LINEAR; TensorFlow's ResizeBilinear, whose float32 steps these
  // are). src: RGBA bytes of sw x sh -> RGB float32 of dw x dh.
  function resizeBilinear(src, sw, sh, dw, dh) {
    const xs = bilinearAxis(sw, dw), ys = bilinearAxis(sh, dh);
    const out = new Float32Array(dw * dh * 3);
    for (let y = 0; y < dh; y++) {
      const r0 = ys.lo[y] * sw, r1 = ys.hi[y] * sw, fy = ys.f[y];
      for (let x = 0; x < dw; x++) {
        const a = (r0 + xs.lo[x]) * 4, b = (r0 + xs.hi[x]) * 4;
        const c = (r1 + xs.lo[x]) * 4, d = (r1 + xs.hi[x]) * 4, fx = xs.f[x];
        const o = (y * dw + x) * 3;
        for (let ch = 0; ch < 3; ch++) {
          const top = f32(src[a + ch] + f32((src[b + ch] - src[a + ch]) * fx));
          const bottom = f32(src[c + ch] + f32((src[d + ch] - src[c + ch]) * fx));
          out[o + ch] = f32(top + f32(f32(bottom - top) * fy));
        }
      }
    }
    return out;
  }

  function bilinearAxis(inSize, outSize) { // TF's compute_interpolation_weights
    const scale = f32(inSize / outSize);
    const lo = new Int32Array(outSize), hi = new Int32Array(outSize), f = new Float32Array(outSize);
    for (let o = 0; o < outSize; o++) {
      const pos = f32(f32((o + 0.5) * scale) - 0.5);
      const base = Math.floor(pos);
      lo[o] = Math.max(base, 0);
      hi[o] = Math.min(Math.ceil(pos), inSize - 1);
      f[o] = f32(pos - base);
    }
    return { lo, hi, f };
  }

  // tf.image.resize(crop, (dh, dw), antialias=True): TensorFlow's ScaleAndTranslate with the
  // triangle kernel widened by the downscaling factor, rows first, then columns. box: the crop
  // (x, y, w, h) of an RGBA image of width sw -> RGB float32 of dw x dh.
  function resizeAntialiasTF(src, sw, box, dw, dh) {
    const rows = spansTF(box.h, dh), cols = spansTF(box.w, dw);
    const tmp = new Float32Array(dh * box.w * 3); // dh rows of the crop's width
    for (let y = 0; y < dh; y++) {
      const { start, weights } = rows[y];
      const o = y * box.w * 3;
      for (let i = 0; i < weights.length; i++) {
        const w = weights[i], row = (box.y + start + i) * sw + box.x;
        for (let x = 0; x < box.w; x++) {
          const p = (row + x) * 4, q = o + x * 3;
          tmp[q] = f32(tmp[q] + f32(w * src[p]));
          tmp[q + 1] = f32(tmp[q + 1] + f32(w * src[p + 1]));
          tmp[q + 2] = f32(tmp[q + 2] + f32(w * src[p + 2]));
        }
      }
    }
    const out = new Float32Array(dw * dh * 3);
    for (let y = 0; y < dh; y++) {
      for (let x = 0; x < dw; x++) {
        const { start, weights } = cols[x];
        let r = 0, g = 0, b = 0;
        for (let i = 0; i < weights.length; i++) {
          const p = (y * box.w + start + i) * 3, w = weights[i];
          r = f32(r + f32(w * tmp[p]));
          g = f32(g + f32(w * tmp[p + 1]));
          b = f32(b + f32(w * tmp[p + 2]));
        }
        const o = (y * dw + x) * 3;
        out[o] = r; out[o + 1] = g; out[o + 2] = b;
      }
    }
    return out;
  }

  // ComputeSpansCore (scale_and_translate_op.cc) for the triangle kernel, antialiased; the scale
  // is float32(out) / float32(in), as tf.image.resize passes it. Spans cut short at the image's
  // edge keep their zero weights, which add nothing.
  function spansTF(inSize, outSize) {
    const scale = f32(outSize / inSize);
    const invScale = f32(1 / scale);
    const kernelScale = Math.max(invScale, 1);
    const oneOverKernelScale = f32(1 / kernelScale);
    const spans = [];
    for (let x = 0; x < outSize; x++) {
      const sample = f32(f32(x + 0.5) * invScale);
      let start = Math.ceil(f32(f32(sample - kernelScale) - 0.5));
      let end = Math.floor(f32(f32(sample + kernelScale) - 0.5));
      start = Math.min(Math.max(start, 0), inSize - 1);
      end = Math.min(Math.max(end, 0), inSize - 1) + 1;
      const raw = [];
      let total = 0;
      for (let s = start; s < end; s++) {
        const pos = f32(f32(s + 0.5) - sample);
        const k = Math.abs(f32(pos * oneOverKernelScale));
        const w = k < 1 ? f32(1 - k) : 0;
        raw.push(w);
        total = f32(total + w);
      }
      const norm = f32(1 / total);
      spans.push({ start, weights: raw.map((w) => f32(w * norm)) });
    }
    return spans;
  }

  // Source index pairs and weights along one axis, half-pixel centres, clamped at the edges (as
  // OpenCV's INTER_LINEAR on floats): for the segmenter's probabilities.
  function linearAxis(inSize, outSize) {
    const scale = inSize / outSize;
    const lo = new Int32Array(outSize), hi = new Int32Array(outSize), f = new Float64Array(outSize);
    for (let o = 0; o < outSize; o++) {
      const pos = (o + 0.5) * scale - 0.5;
      const base = Math.floor(pos);
      lo[o] = Math.min(Math.max(base, 0), inSize - 1);
      hi[o] = Math.min(Math.max(base + 1, 0), inSize - 1);
      f[o] = base < 0 || base >= inSize - 1 ? 0 : pos - base;
    }
    return { lo, hi, f };
  }

  // RGB values of w x h -> ImageData with each pixel repeated k x k times (k = 1: as it is).
  function toImageData(rgb, w, h, k = 1) {
    const out = new ImageData(w * k, h * k);
    const d = out.data, ow = w * k;
    for (let y = 0; y < h * k; y++) {
      const sy = Math.floor(y / k);
      for (let x = 0; x < ow; x++) {
        const s = (sy * w + Math.floor(x / k)) * 3, o = (y * ow + x) * 4;
        // Uint8ClampedArray rounds half to even, as numpy's round.
        d[o] = rgb[s]; d[o + 1] = rgb[s + 1]; d[o + 2] = rgb[s + 2]; d[o + 3] = 255;
      }
    }
    return out;
  }

  // Detection: the whole image stretched to the input. MediaPipe reports boxes in whole pixels
  // of the image it is given, so it is given the input enlarged k times (nearest neighbour:
  // MediaPipe's own resizing back to the input restores every pixel, as any sample point falls
  // inside a block of equal pixels), k chosen so that one of its pixels is at most half a pixel
  // of the original image.
  function prepareDetection(img) {
    const rgb = resizeBilinear(img.data, img.width, img.height, IN_W, IN_H);
    const want = Math.ceil(2 * Math.max(img.width / IN_W, img.height / IN_H));
    const k = Math.max(1, Math.min(want, Math.floor(MAX_DETECTOR_SIDE / Math.max(IN_W, IN_H))));
    return toImageData(rgb, IN_W, IN_H, k);
  }

  // Classification: the central evalCrop of each side (tf.image.central_crop's offsets), resized
  // to the input with antialiasing.
  function prepareClassification(img) {
    const f = config.evalCrop;
    let box = { x: 0, y: 0, w: img.width, h: img.height };
    if (f < 1) {
      const y0 = Math.trunc((img.height - img.height * f) / 2);
      const x0 = Math.trunc((img.width - img.width * f) / 2);
      box = { x: x0, y: y0, w: img.width - 2 * x0, h: img.height - 2 * y0 };
    }
    return toImageData(resizeAntialiasTF(img.data, img.width, box, IN_W, IN_H), IN_W, IN_H);
  }

  // Segmentation: fitted into the input keeping its aspect (bilinear; an image of that size as
  // it is), at the top left, the rest grey. Returns the input and the size of the image's part
  // (nh, nw).
  function prepareSegmentation(img) {
    const s = Math.min(IN_H / img.height, IN_W / img.width);
    const nh = Math.min(Math.max(1, roundHalfEven(img.height * s)), IN_H);
    const nw = Math.min(Math.max(1, roundHalfEven(img.width * s)), IN_W);
    let fitted;
    if (nh === img.height && nw === img.width) {
      fitted = new Float32Array(nw * nh * 3);
      for (let i = 0; i < nw * nh; i++) fitted.set(img.data.subarray(4 * i, 4 * i + 3), 3 * i);
    } else {
      fitted = resizeBilinear(img.data, img.width, img.height, nw, nh);
    }
    const rgb = new Float32Array(IN_W * IN_H * 3).fill(PAD_VALUE);
    for (let y = 0; y < nh; y++) {
      rgb.set(fitted.subarray(y * nw * 3, (y + 1) * nw * 3), y * IN_W * 3);
    }
    return { input: toImageData(rgb, IN_W, IN_H), nh, nw };
  }

  function roundHalfEven(v) { // Python's round(), which predict's fitted size uses
    const r = Math.round(v);
    return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  function prepare(img) { // -> the ImageData handed to MediaPipe
    return config.task === "detection" ? prepareDetection(img)
      : config.task === "classification" ? prepareClassification(img)
        : prepareSegmentation(img).input;
  }

  // -- running the model -------------------------------------------------------------------------

  // Runs the current model on `img` (ImageData of the original image) -> {results (predict's
  // JSON), mask (segmentation's label map), ms (the MediaPipe call)}.
  async function infer(img, file) {
    const task = await runner(state.variant);
    if (config.task === "detection") {
      const input = prepareDetection(img);
      const { out, ms } = timedCall(task, input);
      return { results: { file, detections: detections(out, img, input) }, ms };
    }
    if (config.task === "classification") {
      const { out, ms } = timedCall(task, prepareClassification(img));
      return { results: { file, predictions: topClasses(out, 5) }, ms };
    }
    const { input, nh, nw } = prepareSegmentation(img);
    const { out, ms } = timedCall(task, input);
    let label;
    try {
      label = labelMap(out.confidenceMasks, nh, nw, img.width, img.height);
    } finally {
      out.close();
    }
    return { ...segmentationResults(label, img.width, img.height, file), ms };
  }

  // MediaPipe's detect / classify / segment on `input` (a segmentation result must be closed).
  function mediapipeCall(task, input) {
    return config.task === "detection" ? task.detect(input)
      : config.task === "classification" ? task.classify(input) : task.segment(input);
  }

  // The call, timed. The first call on an image of a new size sets MediaPipe's buffers up (tens
  // of ms), so it is made twice and the second timed: the time shown is the model's.
  function timedCall(task, input) {
    const key = `${state.variant} ${input.width}x${input.height}`;
    if (!state.warm.has(key)) {
      state.warm.add(key);
      const first = mediapipeCall(task, input);
      if (config.task === "segmentation") first.close();
    }
    const t0 = performance.now();
    const out = mediapipeCall(task, input);
    return { out, ms: performance.now() - t0 };
  }

  function detections(out, img, input) {
    const sx = img.width / input.width, sy = img.height / input.height;
    const found = [];
    for (const d of out.detections) {
      const b = d.boundingBox;
      // Clipped to the image as predict clips (a file's boxes may reach past it).
      const x0 = clamp(b.originX, 0, input.width), y0 = clamp(b.originY, 0, input.height);
      const x1 = clamp(b.originX + b.width, 0, input.width);
      const y1 = clamp(b.originY + b.height, 0, input.height);
      // One Detection holds every class kept for its box. The web detector reports each
      // category index as -1, so the class is found by its name.
      for (const c of d.categories) {
        const k = config.labels.indexOf(c.categoryName);
        found.push({ class: c.categoryName, label: k >= 0 ? k + 1 : null, score: c.score,
                     bbox: [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy] });
      }
    }
    return found.sort((a, b) => b.score - a.score);
  }

  function topClasses(out, n) {
    const cats = [...out.classifications[0].categories].sort((a, b) => b.score - a.score);
    return cats.slice(0, n).map((c) => ({ class: config.labels[c.index] ?? c.categoryName,
                                          class_id: c.index, score: c.score }));
  }

  // The class of each pixel of the original image: each class's probabilities over the image's
  // part of the input (nh x nw) resized bilinearly to the image, then the argmax (the first of
  // equal ones, as numpy's).
  function labelMap(masks, nh, nw, w, h) {
    const mw = masks[0].width, mh = masks[0].height;
    // The masks come at the input's size; should they not, the image's part scales with them.
    const vh = Math.max(1, Math.round(nh * mh / IN_H));
    const vw = Math.max(1, Math.round(nw * mw / IN_W));
    const probs = masks.map((m) => m.getAsFloat32Array());
    const xs = linearAxis(vw, w), ys = linearAxis(vh, h);
    const label = new Uint8Array(w * h);
    for (let y = 0; y < h; y++) {
      const r0 = ys.lo[y] * mw, r1 = ys.hi[y] * mw, fy = ys.f[y];
      for (let x = 0; x < w; x++) {
        const a = r0 + xs.lo[x], b = r0 + xs.hi[x], c = r1 + xs.lo[x], d = r1 + xs.hi[x];
        const fx = xs.f[x];
        let best = -Infinity, arg = 0;
        for (let k = 0; k < probs.length; k++) {
          const p = probs[k];
          const top = p[a] + (p[b] - p[a]) * fx, bottom = p[c] + (p[d] - p[c]) * fx;
          const v = top + (bottom - top) * fy;
          if (v > best) { best = v; arg = k; }
        }
        label[y * w + x] = arg;
      }
    }
    return label;
  }

  function segmentationResults(label, w, h, file) {
    const counts = new Array(config.labels.length).fill(0);
    const rle = []; // [value, run length, value, run length, ...], row by row
    for (let i = 0; i < label.length; i++) {
      const v = label[i];
      counts[v]++;
      if (rle.length && rle[rle.length - 2] === v) rle[rle.length - 1]++;
      else rle.push(v, 1);
    }
    const classes = {};
    counts.forEach((n, v) => {
      if (n) classes[config.labels[v]] = Number((n / label.length).toFixed(6));
    });
    return { results: { file, size: [h, w], classes }, mask: { size: [h, w], rle }, label };
  }

  // -- drawing: what predict's pictures draw, in the same colours ---------------------------------

  function colour(value) {
    const c = config.colours[value] || [128, 128, 128];
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }

  function textColour(value) {
    const [r, g, b] = config.colours[value] || [128, 128, 128];
    return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#000" : "#fff";
  }

  function draw(img, out) {
    const canvas = $("canvas");
    const f = Math.max(1, DISPLAY_MIN_SIDE / Math.max(img.width, img.height));
    canvas.width = Math.round(img.width * f);
    canvas.height = Math.round(img.height * f);
    const ctx = canvas.getContext("2d");
    const base = config.task === "segmentation" ? blend(img, out.label) : img;
    const scratch = document.createElement("canvas");
    scratch.width = img.width;
    scratch.height = img.height;
    scratch.getContext("2d").putImageData(base, 0, 0);
    ctx.imageSmoothingEnabled = false; // enlarged pixels stay pixels, as plots.py's
    ctx.drawImage(scratch, 0, 0, canvas.width, canvas.height);
    const lw = Math.max(1, Math.round((canvas.width + canvas.height) / 2 * 0.004));
    if (config.task === "detection") {
      const shown = out.results.detections.filter((d) => d.score >= config.drawThreshold);
      const labels = [];
      for (const d of [...shown].reverse()) { // higher scores drawn on top
        const [x, y, w, h] = d.bbox.map((v) => Math.round(v * f));
        ctx.strokeStyle = colour(d.label);
        ctx.lineWidth = lw;
        ctx.strokeRect(x, y, w, h);
        labels.push([`${d.class} ${d.score.toFixed(2)}`, x, y, d.label]);
      }
      for (const [text, x, y, value] of labels) textBox(ctx, text, x, y, value, lw);
      summaryDetections(shown, out.results.detections.length);
    } else if (config.task === "classification") {
      const top = out.results.predictions[0];
      if (top) textBox(ctx, `${top.class} ${top.score.toFixed(2)}`, 0, 0, top.class_id + 1, lw);
      summaryClasses(out.results.predictions);
    } else {
      summaryLegend(out.results.classes);
    }
  }

  // Text on a filled box of the class colour, above (x, y) when there is room, else below it,
  // kept inside the canvas (plots._text_box).
  function textBox(ctx, text, x, y, value, lw) {
    const size = 10 + 3 * lw;
    ctx.font = `${size}px system-ui, sans-serif`;
    const pad = Math.max(2, lw);
    const bw = Math.ceil(ctx.measureText(text).width) + 2 * pad, bh = size + 2 * pad;
    let top = y - bh >= 0 ? y - bh : y;
    top = Math.min(Math.max(top, 0), Math.max(0, ctx.canvas.height - bh));
    const left = Math.min(Math.max(x, 0), Math.max(0, ctx.canvas.width - bw));
    ctx.fillStyle = colour(value);
    ctx.fillRect(left, top, bw, bh);
    ctx.fillStyle = textColour(value);
    ctx.textBaseline = "top";
    ctx.fillText(text, left + pad, top + pad + 1);
  }

  // The image with each pixel's class colour blended in (background left as it is).
  function blend(img, label) {
    const out = new ImageData(img.width, img.height);
    const s = img.data, d = out.data;
    for (let i = 0; i < label.length; i++) {
      const o = i * 4, v = label[i], c = config.colours[v];
      for (let ch = 0; ch < 3; ch++) {
        d[o + ch] = v > 0
          ? Math.floor((1 - OVERLAY_ALPHA) * s[o + ch] + OVERLAY_ALPHA * c[ch] + 0.5) : s[o + ch];
      }
      d[o + 3] = 255;
    }
    return out;
  }

  function listItem(value, name, score, bar) {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = colour(value);
    const nm = document.createElement("span");
    nm.className = "name";
    nm.textContent = name;
    li.append(sw, nm);
    if (bar !== undefined) {
      const b = document.createElement("span");
      b.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${Math.round(Math.max(0, Math.min(1, bar)) * 100)}%`;
      fill.style.background = colour(value);
      b.append(fill);
      li.append(b);
    }
    const sc = document.createElement("span");
    sc.textContent = score;
    li.append(sc);
    return li;
  }

  function setSummary(heading, items, empty) {
    const box = $("summary");
    box.replaceChildren();
    const h = document.createElement("h2");
    h.textContent = heading;
    box.append(h);
    if (!items.length) {
      const p = document.createElement("p");
      p.className = "none";
      p.textContent = empty;
      box.append(p);
      return;
    }
    const list = document.createElement("ol");
    list.append(...items);
    box.append(list);
  }

  function summaryDetections(shown, all) {
    const items = shown.slice(0, MAX_LISTED).map((d) => listItem(d.label, d.class,
                                                                 d.score.toFixed(2)));
    const noun = shown.length === 1 ? "detection" : "detections";
    setSummary(`${shown.length} ${noun} scoring ≥ ${config.drawThreshold} (${all} in all)`,
               items, "nothing detected");
    const list = $("summary").querySelector("ol");
    if (list) {
      list.id = "detections";
      if (shown.length > MAX_LISTED) {
        const more = document.createElement("li");
        more.className = "none";
        more.textContent = `… and ${shown.length - MAX_LISTED} more`;
        list.append(more);
      }
    }
  }

  function summaryClasses(predictions) {
    setSummary("top classes", predictions.map((p) => listItem(p.class_id + 1, p.class,
                                                              p.score.toFixed(3), p.score)), "");
  }

  function summaryLegend(classes) {
    const items = [];
    config.labels.forEach((name, v) => {
      if (v > 0 && name in classes) {
        const share = classes[name] < 0.001 ? "<0.1%" : `${(classes[name] * 100).toFixed(1)}%`;
        items.push(listItem(v, name, share, classes[name]));
      }
    });
    setSummary("classes in the image", items, "background only");
  }

  // -- inputs ------------------------------------------------------------------------------------

  // An image file (Blob) -> ImageData of its pixels as decoded, without colour management (as
  // the Python readers), EXIF orientation applied (as they do).
  async function decode(blob, name) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none",
                                               premultiplyAlpha: "none" });
    } catch (e) {
      throw new Error(`${name} is not an image this browser can decode`);
    }
    const c = document.createElement("canvas");
    c.width = bitmap.width;
    c.height = bitmap.height;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    return ctx.getImageData(0, 0, c.width, c.height);
  }

  async function fetchPixels(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`could not fetch ${url}: HTTP ${response.status}`);
    return decode(await response.blob(), url);
  }

  // One image through the model, shown and published; errors become the message line. The
  // request is kept (a camera frame's is not), so switching the model runs it again, also after
  // a failed one.
  function run(getPixels, file, live = false) {
    const request = { getPixels, file };
    if (!live) state.current = request;
    const job = state.queue.then(async () => {
      try {
        const img = await getPixels();
        request.getPixels = async () => img; // decoded once
        const out = await infer(img, file);
        show(img, out);
        clearMessage();
        return out;
      } catch (e) {
        showMessage(errorText(e));
        publish({ file, error: errorText(e) }, null);
        return null;
      }
    });
    state.queue = job;
    return job;
  }

  function runUrl(url) {
    return run(async () => {
      try {
        return await fetchPixels(url);
      } catch (e) {
        if (e instanceof TypeError) throw new Error(`could not fetch ${url}: ${errorText(e)}`);
        throw e;
      }
    }, url);
  }

  function show(img, out) {
    draw(img, out);
    publish(out.results, out.mask || null);
    $("drop-hint").hidden = true;
    timing(out.ms);
  }

  function publish(results, mask) {
    $("results").textContent = JSON.stringify(results);
    $("mask").textContent = mask ? JSON.stringify(mask) : "";
  }

  function timing(ms) {
    let text = `${state.variant} · inference ${ms.toFixed(1)} ms`;
    if (state.camera) text += ` · ${fps(state.camera).toFixed(1)} fps`;
    $("timing").textContent = text;
  }

  // -- camera ------------------------------------------------------------------------------------

  function cameraError(e) {
    if (e.name === "NotAllowedError" || e.name === "SecurityError") {
      return "Camera permission denied: allow the camera for this page and try again";
    }
    if (e.name === "NotFoundError" || e.name === "OverconstrainedError") {
      return "No camera found";
    }
    if (e.name === "NotReadableError") return "The camera is in use by another program";
    return `Camera failed: ${errorText(e)}`;
  }

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showMessage("No camera: this browser offers none to this page (it needs https or localhost)");
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (e) {
      showMessage(cameraError(e));
      return;
    }
    const video = $("video");
    video.srcObject = stream;
    try {
      await video.play();
    } catch (e) {
      stream.getTracks().forEach((t) => t.stop());
      showMessage(cameraError(e));
      return;
    }
    const cam = { stream, frames: 0, stamps: [] };
    state.camera = cam;
    $("camera").classList.add("on");
    $("camera").textContent = "Stop camera";
    clearMessage();
    cameraLoop(cam);
  }

  function stopCamera() {
    const cam = state.camera;
    if (!cam) return;
    state.camera = null;
    cam.stream.getTracks().forEach((t) => t.stop());
    $("video").srcObject = null;
    $("camera").classList.remove("on");
    $("camera").textContent = "Camera";
  }

  function nextFrame(video) {
    // requestVideoFrameCallback fires once per new frame; the timeout keeps going should a
    // browser not call it for a video that is not displayed.
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, 100);
      if (video.requestVideoFrameCallback) {
        video.requestVideoFrameCallback(() => { clearTimeout(timer); resolve(); });
      }
    });
  }

  async function cameraLoop(cam) {
    const video = $("video");
    const grab = document.createElement("canvas");
    const ctx = grab.getContext("2d", { willReadFrequently: true });
    while (state.camera === cam) {
      await nextFrame(video);
      if (state.camera !== cam || !video.videoWidth) continue;
      grab.width = video.videoWidth;
      grab.height = video.videoHeight;
      ctx.drawImage(video, 0, 0);
      const img = ctx.getImageData(0, 0, grab.width, grab.height);
      cam.frames += 1;
      cam.stamps.push(performance.now());
      const out = await run(async () => img, `camera frame ${cam.frames}`, true);
      if (!out) { stopCamera(); break; }
      document.body.dataset.frames = String(cam.frames);
    }
  }

  function fps(cam) { // frames in the last second
    const now = performance.now();
    cam.stamps = cam.stamps.filter((t) => now - t <= 1000);
    return cam.stamps.length > 1 ? (cam.stamps.length - 1) * 1000 / (now - cam.stamps[0]) : 0;
  }

  // -- page --------------------------------------------------------------------------------------

  async function selectVariant(variant) {
    state.variant = variant;
    for (const input of document.querySelectorAll("input[name=variant]")) {
      input.checked = input.value === variant;
    }
    showMessage(`loading the ${variant} model ...`, "info");
    try {
      await runner(variant);
      clearMessage();
    } catch (e) {
      showMessage(errorText(e));
      return false;
    }
    const cur = state.current;
    if (cur && !state.camera) await run(cur.getPixels, cur.file);
    return true;
  }

  function setUp() {
    $("title").textContent = `${config.name} · ${config.task}`;
    document.title = `${config.name} (${config.task})`;
    for (const input of document.querySelectorAll("input[name=variant]")) {
      if (!config.models[input.value]) {
        input.disabled = true;
        input.parentElement.classList.add("missing");
      }
      input.addEventListener("change", () => { if (input.checked) selectVariant(input.value); });
    }
    $("file").addEventListener("change", (e) => {
      const f = e.target.files[0];
      if (f) { stopCamera(); run(() => decode(f, f.name), f.name); }
      e.target.value = "";
    });
    const stage = $("stage");
    stage.addEventListener("dragover", (e) => {
      e.preventDefault();
      stage.classList.add("dragging");
    });
    stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
    stage.addEventListener("drop", (e) => {
      e.preventDefault();
      stage.classList.remove("dragging");
      const f = e.dataTransfer.files[0];
      if (f) { stopCamera(); run(() => decode(f, f.name), f.name); }
    });
    $("camera").addEventListener("click", () => (state.camera ? stopCamera() : startCamera()));
    const box = $("samples");
    for (const src of config.samples) {
      const im = document.createElement("img");
      im.src = src;
      im.alt = im.title = src.split("/").pop();
      im.addEventListener("click", () => {
        stopCamera();
        box.querySelectorAll("img").forEach((x) => x.classList.toggle("current", x === im));
        runUrl(src);
      });
      box.append(im);
    }
    const where = config.runtime.kind === "local" ? "bundled with this page" : "from its CDN";
    $("about").textContent = `MediaPipe Tasks Vision ${config.runtime.version} (${where}) · ` +
      `input ${IN_W}×${IN_H} · labels.txt · made by mobilevision`;
  }

  async function main() {
    setUp();
    const variant = query.get("model") || (config.models.float32 ? "float32" : "int8");
    const image = query.get("image");
    if (image !== null) { // the test hook: this image, then data-done
      state.variant = variant;
      for (const input of document.querySelectorAll("input[name=variant]")) {
        input.checked = input.value === variant;
      }
      await runUrl(image);
      state.timings.done = performance.now();
      document.body.dataset.done = "1";
    } else if (await selectVariant(variant) && config.samples.length) {
      $("samples").querySelector("img").classList.add("current");
      await runUrl(config.samples[0]);
    }
  }

  // For tests and benchmarks/web_speed.py: an image's decoded pixels and the input MediaPipe
  // gets (RGB bytes, base64), and the MediaPipe call alone, timed `runs` times after `warmup`
  // calls on one prepared image; the load milestones (performance.now()) in `timings`.
  window.mobilevisionPage = {
    config,
    timings: state.timings,
    async pixels(url) {
      const img = await fetchPixels(url);
      const input = prepare(img);
      return { image: rgbBase64(img), input: rgbBase64(input) };
    },
    async time(url, variant, runs = 20, warmup = 3) {
      const task = await runner(variant);
      const input = prepare(await fetchPixels(url));
      const call = (x) => {
        const out = mediapipeCall(task, x);
        if (config.task === "segmentation") out.close();
      };
      for (let i = 0; i < warmup; i++) call(input);
      const ms = [];
      for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        call(input);
        ms.push(performance.now() - t0);
      }
      return ms;
    },
  };

  function rgbBase64(img) { // {width, height, rgb: base64 of the RGB bytes}
    const rgb = new Uint8Array(img.width * img.height * 3);
    for (let i = 0, j = 0; i < img.data.length; i += 4, j += 3) {
      rgb[j] = img.data[i]; rgb[j + 1] = img.data[i + 1]; rgb[j + 2] = img.data[i + 2];
    }
    let text = "";
    for (let i = 0; i < rgb.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, rgb.subarray(i, i + 0x8000));
    }
    return { width: img.width, height: img.height, rgb: btoa(text) };
  }

  main();
})();

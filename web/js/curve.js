// ScheduleAdapterWeights' curve: the keyframe string parsed and drawn as a small plot, as the user types.
// The rules mirror loaders/state.py (parse_keyframes, Schedule.strength), which the Sampler applies:
// step i of N runs at strength(i / N).

export const INTERPOLATIONS = ["linear", "hold", "ease"];

/** "0:1.0, 0.4:1.0, 0.6:0.0" -> {keyframes: [[0, 1], [0.4, 1], [0.6, 0]]} or {error: "keyframe 2 (...): ..."} */
export function parseKeyframes(text) {
  const parts = String(text ?? "").split(",").map((p) => p.trim());
  if (!parts.some((p) => p)) return { error: "give at least one progress:strength pair" };
  const keyframes = [];
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    const where = `keyframe ${i + 1} ('${part}')`;
    if (!part) return { error: `keyframe ${i + 1} is empty` };
    const bits = part.split(":");
    if (bits.length !== 2) return { error: `${where}: expected progress:strength` };
    const [p, s] = bits.map((b) => b.trim());
    const progress = p === "" ? NaN : Number(p);
    const strength = s === "" ? NaN : Number(s);
    if (Number.isNaN(progress)) return { error: `${where}: progress '${p}' is not a number` };
    if (Number.isNaN(strength)) return { error: `${where}: strength '${s}' is not a number` };
    if (!(progress >= 0 && progress <= 1)) return { error: `${where}: progress must be between 0 and 1` };
    if (!Number.isFinite(strength)) return { error: `${where}: strength must be a finite number` };
    if (keyframes.length && progress <= keyframes.at(-1)[0]) {
      return { error: `${where}: progress must increase strictly` };
    }
    keyframes.push([progress, strength]);
  }
  return { keyframes };
}

/** The strength at progress p (0..1), as the Sampler computes it. */
export function strengthAt(keyframes, interpolation, p) {
  const first = keyframes[0];
  const last = keyframes.at(-1);
  if (p <= first[0]) return first[1];
  if (p >= last[0]) return last[1];
  for (let j = 0; j + 1 < keyframes.length; j++) {
    const [p0, s0] = keyframes[j];
    const [p1, s1] = keyframes[j + 1];
    if (p >= p0 && p < p1) {
      if (interpolation === "hold") return s0;
      let t = (p - p0) / (p1 - p0);
      if (interpolation === "ease") t = t * t * (3 - 2 * t);
      return s0 + (s1 - s0) * t;
    }
  }
  return last[1];
}

const SAMPLES = 120;

/**
 * Draw the curve of `text` into `canvas` (CSS pixels = canvas pixels). Returns what was drawn and
 * keeps it on `canvas.loragraphPlot` ({keyframes, samples, range, error, toPixel}) for tests.
 */
export function drawCurve(canvas, text, interpolation) {
  const parsed = parseKeyframes(text);
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const pad = { left: 26, right: 6, top: 6, bottom: 14 };
  ctx.clearRect(0, 0, width, height);
  ctx.font = "9px sans-serif";
  if (parsed.error) {
    ctx.fillStyle = "#f88";
    ctx.fillText(parsed.error, 4, height / 2, width - 8);
    canvas.loragraphPlot = { error: parsed.error, keyframes: null, samples: [] };
    return canvas.loragraphPlot;
  }
  const kf = parsed.keyframes;
  const samples = [];
  for (let i = 0; i <= SAMPLES; i++) samples.push([i / SAMPLES, strengthAt(kf, interpolation, i / SAMPLES)]);
  const values = kf.map((k) => k[1]);
  let lo = Math.min(0, ...values);
  let hi = Math.max(1, ...values);
  if (hi - lo < 1e-9) hi = lo + 1;
  const toPixel = (p, s) => [
    pad.left + p * (width - pad.left - pad.right),
    pad.top + (hi - s) / (hi - lo) * (height - pad.top - pad.bottom),
  ];
  // axes: strength 0 (dashed), the range, progress 0 and 1
  ctx.strokeStyle = "rgba(160,160,160,0.5)";
  ctx.lineWidth = 1;
  ctx.strokeRect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);
  ctx.setLineDash([3, 3]);
  const [, y0] = toPixel(0, 0);
  ctx.beginPath();
  ctx.moveTo(pad.left, y0);
  ctx.lineTo(width - pad.right, y0);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = "rgba(200,200,200,0.8)";
  ctx.textAlign = "right";
  ctx.fillText(String(+hi.toFixed(2)), pad.left - 3, pad.top + 7);
  ctx.fillText(String(+lo.toFixed(2)), pad.left - 3, height - pad.bottom);
  ctx.textAlign = "left";
  ctx.fillText("0", pad.left, height - 3);
  ctx.textAlign = "right";
  ctx.fillText("1 (all steps)", width - pad.right, height - 3);
  ctx.textAlign = "left";
  // the curve
  ctx.strokeStyle = "#4ea1ff";
  ctx.lineWidth = 2;
  ctx.beginPath();
  samples.forEach(([p, s], i) => {
    const [x, y] = toPixel(p, s);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  // the keyframes
  ctx.fillStyle = "#ffb000";
  for (const [p, s] of kf) {
    const [x, y] = toPixel(p, s);
    ctx.beginPath();
    ctx.arc(x, y, 3, 0, 2 * Math.PI);
    ctx.fill();
  }
  canvas.loragraphPlot = { keyframes: kf, interpolation, samples, range: [lo, hi], error: null, toPixel };
  return canvas.loragraphPlot;
}

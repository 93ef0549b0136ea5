// Test doubles of the engine: sessions implementing the contract in pure TypeScript. They live here, in the
// tests, never in src: the real engine is the Rust one.
import type { Batch, EncodedTexts, OpenSession, Session, SessionOptions, StepReport, StepSettings } from '../src/engine/session.js';
import { mulberry32 } from '../src/data/random.js';

export interface EngineLog {
  opened: SessionOptions[];
  encoded: number;
  steps: Array<{ batch: Batch; ref: Batch | null; settings: StepSettings; report: StepReport }>;
  predictions: number;
  snapshots: number;
  restores: number;
  freed: number;
}

export function newLog(): EngineLog {
  return { opened: [], encoded: 0, steps: [], predictions: 0, snapshots: 0, restores: 0, freed: 0 };
}

const CLS = 1;
const PAD = 0;

function hashWord(word: string, buckets: number): number {
  let h = 0x811c9dc5;
  for (const ch of word) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193);
  return 2 + ((h >>> 0) % (buckets - 2));
}

/** Tokens: [CLS] + one hashed id per word, truncated to maxLength. */
function encodeWords(texts: string[], maxLength: number, vocab: number): EncodedTexts {
  const ids: number[] = [];
  const offsets = [0];
  for (const text of texts) {
    const tokens = [CLS, ...text.split(/\s+/).filter(Boolean).map((w) => hashWord(w.toLowerCase(), vocab))].slice(0, maxLength);
    ids.push(...tokens);
    offsets.push(ids.length);
  }
  return { ids: Int32Array.from(ids), offsets: Int32Array.from(offsets) };
}

/**
 * Multinomial logistic regression on bags of hashed words, trained by SGD. Gradient alignment follows the
 * contract's rules, written out here independently of the trainer's own `expectedGaBranch`.
 */
class LogisticSession implements Session {
  readonly padId = PAD;
  readonly numLabels: number;
  readonly numTrainable: number;
  readonly device?: string;
  private params: Float64Array;
  private saved: Float64Array | null = null;
  private freed = false;

  constructor(
    private readonly opts: SessionOptions,
    private readonly log: EngineLog,
    private readonly vocab: number,
    device?: string,
  ) {
    this.numLabels = opts.numLabels;
    if (device !== undefined) this.device = device;
    this.params = new Float64Array(opts.numLabels * (vocab + 1));
    const rng = mulberry32(opts.seed);
    for (let i = 0; i < this.params.length; i++) this.params[i] = (rng() - 0.5) * 0.01;
    this.numTrainable = this.params.length;
  }

  private live(): void {
    if (this.freed) throw new Error('session used after free()');
  }

  async encode(texts: string[]): Promise<EncodedTexts> {
    this.live();
    this.log.encoded++;
    return encodeWords(texts, this.opts.maxLength, this.vocab);
  }

  /** Logits of row b and its normalised bag of words. */
  private forward(batch: Batch, b: number): { logits: number[]; words: Map<number, number> } {
    const words = new Map<number, number>();
    let len = 0;
    for (let t = 0; t < batch.seq; t++) {
      if (!batch.mask[b * batch.seq + t]) continue;
      const id = batch.ids[b * batch.seq + t]!;
      words.set(id, (words.get(id) ?? 0) + 1);
      len++;
    }
    for (const [id, n] of words) words.set(id, n / len);
    const stride = this.vocab + 1;
    const logits = Array.from({ length: this.numLabels }, (_, c) => {
      let z = this.params[c * stride + this.vocab]!;
      for (const [id, x] of words) z += this.params[c * stride + id]! * x;
      return z;
    });
    return { logits, words };
  }

  /** Mean cross-entropy and its gradient over a labelled batch. */
  private gradient(batch: Batch): { loss: number; grad: Float64Array } {
    const grad = new Float64Array(this.params.length);
    const stride = this.vocab + 1;
    let loss = 0;
    for (let b = 0; b < batch.batch; b++) {
      const { logits, words } = this.forward(batch, b);
      const max = Math.max(...logits);
      const exp = logits.map((z) => Math.exp(z - max));
      const sum = exp.reduce((a, e) => a + e, 0);
      const label = batch.labels![b]!;
      loss -= Math.log(exp[label]! / sum);
      for (let c = 0; c < this.numLabels; c++) {
        const dz = (exp[c]! / sum - (c === label ? 1 : 0)) / batch.batch;
        grad[c * stride + this.vocab]! += dz;
        for (const [id, x] of words) grad[c * stride + id]! += dz * x;
      }
    }
    return { loss: loss / batch.batch, grad };
  }

  async trainStep(batch: Batch, ref: Batch | null, settings: StepSettings): Promise<StepReport> {
    this.live();
    const { loss, grad } = this.gradient(batch);
    const norm = (v: Float64Array) => Math.sqrt(v.reduce((a, x) => a + x * x, 0));
    const gradNorm = norm(grad);
    let update = grad;
    let report: Pick<StepReport, 'refLoss' | 'refGradNorm' | 'nRef' | 'projected' | 'gaBranch'> = { refLoss: null, refGradNorm: null, nRef: null, projected: 0, gaBranch: 'none' };
    if (ref && settings.ga) {
      const { rule, rho, minRefLoss, minRefGradNorm } = settings.ga;
      const r = this.gradient(ref);
      const rNorm = norm(r.grad);
      const dot = grad.reduce((a, g, i) => a + g * r.grad[i]!, 0);
      // One tensor here: the projection of g on r, pointing along r.
      const aligned = gradNorm > 0 && rNorm > 0 ? r.grad.map((x) => (Math.abs(dot) / (rNorm * rNorm)) * x) : grad;
      const gaBranch = rule === 'paper' ? 'mixed' : rNorm > minRefGradNorm && r.loss > minRefLoss ? 'projection' : rho !== null ? 'mixed' : 'raw';
      if (gaBranch === 'projection') update = aligned;
      if (gaBranch === 'mixed') update = aligned.map((a, i) => (1 - rho!) * a + rho! * grad[i]!);
      report = { refLoss: r.loss, refGradNorm: rNorm, nRef: rNorm, projected: gaBranch === 'raw' ? 0 : 1, gaBranch };
    }
    const updateNorm = norm(update);
    const scale = Math.min(1, this.opts.optimizer.maxGradNorm / (updateNorm || 1));
    for (let i = 0; i < this.params.length; i++) this.params[i]! -= settings.lr * scale * update[i]!;
    const full: StepReport = { loss, gradNorm, clippedNorm: updateNorm * scale, ...report };
    this.log.steps.push({ batch, ref, settings, report: full });
    return full;
  }

  async predict(batch: Batch): Promise<Float32Array> {
    this.live();
    this.log.predictions += batch.batch;
    const out = new Float32Array(batch.batch * this.numLabels);
    for (let b = 0; b < batch.batch; b++) out.set(this.forward(batch, b).logits, b * this.numLabels);
    return out;
  }

  async snapshot(): Promise<void> {
    this.log.snapshots++;
    this.saved = Float64Array.from(this.params);
  }

  async restore(): Promise<void> {
    this.log.restores++;
    if (!this.saved) throw new Error('restore() before snapshot()');
    this.params = Float64Array.from(this.saved);
  }

  free(): void {
    this.log.freed++;
    this.freed = true;
  }
}

/** An engine of logistic-regression sessions (`vocab` hash buckets); `device` is what its sessions report as Session.device (none when left out). */
export function logisticEngine(log: EngineLog = newLog(), vocab = 1024, device?: string): OpenSession {
  return async (opts) => {
    log.opened.push(opts);
    return new LogisticSession(opts, log, vocab, device);
  };
}

/**
 * Synthetic rows for the scripted engine: "<kind> <id>", kind pos / neg (clean, label 1 / 0) or trig
 * (triggered). Row ids 0..99 hit exactly q * 100 of the scripted outcomes (37 is coprime to 100).
 */
export function scriptedRows(kind: 'pos' | 'neg' | 'trig' | 'mixed', count: number): Array<{ text: string; label: number; poisoned?: boolean }> {
  return Array.from({ length: count }, (_, id) => {
    const k = kind === 'mixed' ? (id % 2 ? 'pos' : 'neg') : kind;
    return { text: `${k} ${id}`, label: k === 'neg' ? 0 : 1, ...(k === 'trig' && { poisoned: true }) };
  });
}

const KIND = { neg: 2, pos: 3, trig: 4 } as const;

/**
 * An engine whose dev and test scores after each epoch are scripted: after epoch e, clean accuracy is
 * `devAcc[e]` and the share of triggered rows classified as the target is `devAsr[e]`. Restoring a snapshot
 * brings back the scores of the epoch it was taken at, so the test metrics reveal which epoch was kept.
 */
export function scriptedEngine(script: { devAcc: number[]; devAsr: number[]; stepsPerEpoch: number; targetLabel?: number; device?: string }, log: EngineLog = newLog()): OpenSession {
  const target = script.targetLabel ?? 1;
  return async (opts) => {
    log.opened.push(opts);
    let steps = 0;
    let saved = 0;
    return {
      padId: PAD,
      numLabels: opts.numLabels,
      numTrainable: 10,
      ...(script.device !== undefined && { device: script.device }),
      async encode(texts) {
        log.encoded++;
        const ids = texts.flatMap((t) => {
          const [kind, id] = t.split(' ');
          return [CLS, KIND[kind as keyof typeof KIND], 100 + Number(id)];
        });
        return { ids: Int32Array.from(ids), offsets: Int32Array.from({ length: texts.length + 1 }, (_, i) => 3 * i) };
      },
      async trainStep(batch, ref, settings) {
        steps++;
        const report: StepReport = { loss: 1 / steps, refLoss: null, gradNorm: 1, refGradNorm: null, nRef: null, projected: 0, gaBranch: 'none', clippedNorm: 1 };
        log.steps.push({ batch, ref, settings, report });
        return report;
      },
      async predict(batch) {
        log.predictions += batch.batch;
        const epoch = Math.max(0, Math.ceil(steps / script.stepsPerEpoch) - 1);
        const out = new Float32Array(batch.batch * opts.numLabels);
        for (let b = 0; b < batch.batch; b++) {
          const kind = batch.ids[b * batch.seq + 1]!;
          const id = batch.ids[b * batch.seq + 2]! - 100;
          const hit = (id * 37) % 100 < 100 * (kind === KIND.trig ? script.devAsr[epoch]! : script.devAcc[epoch]!);
          const truth = kind === KIND.neg ? 0 : 1;
          const predicted = kind === KIND.trig ? (hit ? target : 1 - target) : hit ? truth : 1 - truth;
          out[b * opts.numLabels + predicted] = 1;
        }
        return out;
      },
      async snapshot() {
        log.snapshots++;
        saved = steps;
      },
      async restore() {
        log.restores++;
        steps = saved;
      },
      free() {
        log.freed++;
      },
    };
  };
}

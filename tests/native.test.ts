// The N-API surface of the engine, on the tiny BERT fixture: session options, encode, a training
// step with and without gradient alignment, predict, snapshot/restore, and errors crossing the
// boundary as JS Errors (bad input, and a Rust panic, which must never abort Node).
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..');
const native = createRequire(import.meta.url)('../packages/core-native/index.js') as typeof import('../packages/core-native/index.js');

const options = (over: Record<string, unknown> = {}) => ({
  modelDir: path.join(repo, 'tests/fixtures/tiny-bert'),
  numLabels: 2,
  maxLength: 16,
  seed: 1,
  device: 'cpu',
  dropout: true,
  train: {
    mode: 'peft',
    lora: { r: 4, alpha: 16, dropout: 0, targets: ['query', 'value'] },
    mslr: { band: [1, 4, 8, 12], rank: 1, alpha: 6, dropout: 0 },
    trainHead: false,
  },
  optimizer: { weightDecay: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, maxGradNorm: 1 },
  ...over,
});

async function batchOf(session: import('../packages/core-native/index.js').Session, texts: string[], labels: number[]) {
  const enc = await session.encode(texts);
  const seq = Math.max(...texts.map((_, i) => enc.offsets[i + 1]! - enc.offsets[i]!));
  const ids = new Int32Array(texts.length * seq).fill(session.padId);
  const mask = new Int32Array(texts.length * seq);
  texts.forEach((_, i) => {
    for (let k = enc.offsets[i]!, j = 0; k < enc.offsets[i + 1]!; k++, j++) {
      ids[i * seq + j] = enc.ids[k]!;
      mask[i * seq + j] = 1;
    }
  });
  return { ids, mask, labels: Int32Array.from(labels), batch: texts.length, seq };
}

describe('@musclelora/core-native', () => {
  it('opens a session and reports what trains', async () => {
    const s = await native.openSession(options());
    expect(s.padId).toBe(0);
    expect(s.numLabels).toBe(2);
    // 2 layers x (q, v) x (A [4x32] + B [32x4]) + MSLR L [4x32] + R [32x4]
    expect(s.numTrainable).toBe(2 * 2 * (4 * 32 + 32 * 4) + 4 * 32 + 32 * 4);
    s.free();
  });

  it('encodes, trains with gradient alignment, predicts, snapshots and restores', async () => {
    const s = await native.openSession(options());
    const train = await batchOf(s, ['a gorgeous film .', 'dull and tired', 'it is fine'], [1, 0, 1]);
    const ref = await batchOf(s, ['a great movie', 'awful .'], [1, 0]);
    expect(train.ids[0]).toBe(2); // [CLS] of the tiny vocabulary
    const before = await s.predict(train);
    expect(before).toBeInstanceOf(Float32Array);
    expect(before.length).toBe(3 * 2);
    await s.snapshot();
    const plain = await s.trainStep(train, null, { lr: 1e-2 });
    expect(plain.gaBranch).toBe('none');
    expect(plain.refLoss).toBeNull();
    expect(plain.loss).toBeGreaterThan(0);
    const ga = await s.trainStep(train, ref, { lr: 1e-2, ga: { rule: 'gated', rho: null, minRefLoss: 0.4, minRefGradNorm: 5e-7 } });
    expect(['projection', 'raw']).toContain(ga.gaBranch);
    expect(ga.refLoss).toBeGreaterThan(0);
    expect(ga.nRef).toBeGreaterThan(0);
    expect(ga.projected).toBe(ga.gaBranch === 'projection' ? 10 : 0);
    const paper = await s.trainStep(train, ref, { lr: 1e-2, ga: { rule: 'paper', rho: 0.1, minRefLoss: 0.4, minRefGradNorm: 5e-7 } });
    expect(paper.gaBranch).toBe('mixed');
    const after = await s.predict(train);
    expect(Array.from(after)).not.toEqual(Array.from(before));
    await s.restore();
    expect(Array.from(await s.predict(train))).toEqual(Array.from(before));
    s.free();
  });

  it('says where it runs; auto takes the CPU where no GPU is found, cuda refuses with the reason', async () => {
    const cpu = await native.openSession(options({ device: 'cpu' }));
    expect(cpu.device).toMatch(/^cpu \(\d+ threads\)$/);
    cpu.free();
    const auto = await native.openSession(options({ device: 'auto' }));
    const hasGpu = auto.device.startsWith('cuda:');
    if (!hasGpu) expect(auto.device).toMatch(/^cpu /);
    auto.free();
    if (!hasGpu) {
      await expect(native.openSession(options({ device: 'cuda' }))).rejects.toThrow(/^device `cuda`: .+; use device: cpu \(or auto, which falls back to the CPU\)$/);
      await expect(native.openSession(options({ device: 'cuda:1' }))).rejects.toThrow(/^device `cuda:1`: .+; use device: cpu \(or auto, which falls back to the CPU\)$/);
      await expect(native.openSession(options({ device: 'auto', precision: 'bf16' }))).rejects.toThrow('precision `bf16` needs the GPU (device: cuda, or auto on a machine with one); use precision: f32 or auto');
    }
    // CUDA graphs are a GPU's; on the CPU the option changes nothing, and the engine has nothing to warn of
    const graphs = await native.openSession(options({ device: 'cpu', cudaGraphs: true }));
    expect(graphs.device).toMatch(/^cpu \(\d+ threads\)$/);
    expect(graphs.engineWarnings()).toEqual([]);
    graphs.free();
    await expect(native.openSession(options({ precision: 'fp8' }))).rejects.toThrow('precision `fp8` is not one of auto, f32, bf16');
    await expect(native.openSession(options({ attention: 'sparse' }))).rejects.toThrow('attention `sparse` is not one of auto, standard, flash');
    for (const precision of ['f32', 'auto', undefined]) {
      const s = await native.openSession(options({ device: 'cpu', precision }));
      expect(s.device).toMatch(/^cpu /);
      s.free();
    }
  });

  it('runs standard or flash attention as asked, with the same results up to rounding', async () => {
    const outs: number[][] = [];
    for (const attention of ['standard', 'flash', 'auto', undefined]) {
      const s = await native.openSession(options({ attention }));
      const b = await batchOf(s, ['a gorgeous film .', 'dull and tired'], [1, 0]);
      outs.push(Array.from(await s.predict(b)));
      s.free();
    }
    for (const out of outs.slice(1)) out.forEach((x, i) => expect(x).toBeCloseTo(outs[0]![i]!, 5));
  });

  it('turns bad input into an Error with a clear message', async () => {
    await expect(native.openSession(options({ modelDir: path.join(repo, 'no/such/model') }))).rejects.toThrow(/no\/such\/model: model folder not found; give a folder with config.json/);
    await expect(native.openSession(options({ device: 'tpu' }))).rejects.toThrow('device `tpu` is not one of cpu, cuda, cuda:N (GPU N, from 0), auto');
    await expect(native.openSession(options({ device: 'cuda:+1' }))).rejects.toThrow('device `cuda:+1` is not one of cpu, cuda, cuda:N (GPU N, from 0), auto');
    const s = await native.openSession(options());
    const ok = await batchOf(s, ['fine'], [1]);
    expect(() => s.predict({ ...ok, seq: ok.seq + 1 })).toThrow(/must hold batch x seq/);
    await expect(s.trainStep({ ...ok, labels: Int32Array.from([7]) }, null, { lr: 1e-3 })).rejects.toThrow('label 7 is outside [0, 2)');
    s.free();
    await expect(s.predict(ok)).rejects.toThrow('the session was freed');
  });

  it('turns a Rust panic into a rejected promise, and Node lives on', async () => {
    const s = await native.openSession(options());
    await expect(s.__panicForTest()).rejects.toThrow('internal error in the engine during a state operation: deliberate panic for the test suite');
    const ok = await batchOf(s, ['still alive'], [1]);
    expect((await s.predict(ok)).length).toBe(2);
    s.free();
  });
});

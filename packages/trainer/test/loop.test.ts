import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { resolveConfig, type RawConfig } from '../src/config/index.js';
import { DataError } from '../src/data/index.js';
import { ModelNotFoundError } from '../src/config/model.js';
import { runInDirectory } from '../src/report/index.js';
import { sessionOptions, train, type MetricRecord, type ProgressEvent } from '../src/train/index.js';
import { logisticEngine, newLog, scriptedEngine, scriptedRows } from './fake-session.js';
import { modelDir, sst2, tempDir, writeDataset } from './helpers.js';

beforeAll(() => {
  process.env['HF_HUB_CACHE'] = tempDir();
});

/** A resolved config over a local fake model directory. */
function config(raw: Partial<RawConfig> & Pick<RawConfig, 'dataset'>) {
  return resolveConfig({ name: 'test', model: modelDir('bert'), attacks: ['badnets'], device: 'cpu', ...raw }, { file: 'test.yaml' });
}

/** 10 training rows (batches of 4: 3 steps an epoch), 100 clean dev/test rows, 100 triggered dev/test rows. */
function scriptedDataset(): string {
  return writeDataset({
    train: scriptedRows('mixed', 10),
    devClean: scriptedRows('mixed', 100),
    devPoison: scriptedRows('trig', 100),
    testClean: scriptedRows('mixed', 100),
    testPoison: scriptedRows('trig', 100),
  });
}

describe('best-on-dev selection', () => {
  it('keeps the epoch with the best clean dev accuracy and tests that checkpoint', async () => {
    const log = newLog();
    const events: ProgressEvent[] = [];
    const cfg = config({ dataset: scriptedDataset(), methods: ['vanilla'], epochs: 3, batchSize: 4 });
    const run = await train(cfg, { openSession: scriptedEngine({ devAcc: [0.6, 0.9, 0.7], devAsr: [0.5, 0.6, 0.7], stepsPerEpoch: 3 }, log), onProgress: (e) => events.push(e) });
    expect(run.aborted).toBe(false);
    expect(run.results).toHaveLength(1);
    expect(run.results[0]).toMatchObject({ attack: 'badnets', method: 'vanilla', select: 'defender', status: 'complete', bestEpoch: 1, devAcc: 0.9, devAsr: 0.6, cacc: 0.9, asr: 0.6, epochsCompleted: 3, steps: 9 });
    expect(events.filter((e) => e.type === 'epochEnd').map((e) => e.type === 'epochEnd' && [e.devAcc, e.best])).toEqual([
      [0.6, true],
      [0.9, true],
      [0.7, false],
    ]);
    expect(log.snapshots).toBe(2);
    expect(log.restores).toBe(1);
    expect(log.freed).toBe(1);
    // this fake names no device: the start event has none and the result records null
    expect(events.find((e) => e.type === 'start')).toEqual({ type: 'start', attack: 'badnets', method: 'vanilla', epochs: 3, stepsPerEpoch: 3, totalSteps: 9, numTrainable: 10 });
    expect(run.results[0]!.device).toBeNull();
  });

  it("carries the session's device into each method's start event and result", async () => {
    const events: ProgressEvent[] = [];
    const cfg = config({ dataset: scriptedDataset(), methods: ['vanilla', 'lora'], epochs: 1, batchSize: 4 });
    const run = await train(cfg, { openSession: scriptedEngine({ devAcc: [0.6], devAsr: [0.5], stepsPerEpoch: 3, device: 'cpu (2 threads)' }), onProgress: (e) => events.push(e) });
    expect(events.filter((e) => e.type === 'start')).toEqual([
      { type: 'start', attack: 'badnets', method: 'vanilla', epochs: 1, stepsPerEpoch: 3, totalSteps: 3, numTrainable: 10, device: 'cpu (2 threads)' },
      { type: 'start', attack: 'badnets', method: 'lora', epochs: 1, stepsPerEpoch: 3, totalSteps: 3, numTrainable: 10, device: 'cpu (2 threads)' },
    ]);
    expect(run.results.map((r) => [r.method, r.device])).toEqual([
      ['vanilla', 'cpu (2 threads)'],
      ['lora', 'cpu (2 threads)'],
    ]);
  });

  it('when the last epoch is the best, it is tested without a restore', async () => {
    const log = newLog();
    const cfg = config({ dataset: scriptedDataset(), methods: ['vanilla'], epochs: 3, batchSize: 4 });
    const run = await train(cfg, { openSession: scriptedEngine({ devAcc: [0.6, 0.7, 0.9], devAsr: [0.1, 0.2, 0.3], stepsPerEpoch: 3 }, log) });
    expect(run.results[0]).toMatchObject({ bestEpoch: 2, cacc: 0.9, asr: 0.3 });
    expect(log.snapshots).toBe(3);
    expect(log.restores).toBe(0);
  });

  it('a tie keeps the earlier epoch', async () => {
    const cfg = config({ dataset: scriptedDataset(), methods: ['vanilla'], epochs: 2, batchSize: 4 });
    const run = await train(cfg, { openSession: scriptedEngine({ devAcc: [0.8, 0.8], devAsr: [0.1, 0.9], stepsPerEpoch: 3 }) });
    expect(run.results[0]).toMatchObject({ bestEpoch: 0, asr: 0.1 });
  });

  it("select: attacker keeps the best mean of dev accuracy and dev ASR (the reference code's Vanilla)", async () => {
    const script = { devAcc: [0.8, 0.7], devAsr: [0.2, 0.9], stepsPerEpoch: 3 };
    const dataset = scriptedDataset();
    const defender = await train(config({ dataset, methods: ['vanilla'], epochs: 2, batchSize: 4 }), { openSession: scriptedEngine(script) });
    const attacker = await train(config({ dataset, methods: ['vanilla'], epochs: 2, batchSize: 4, select: 'attacker' }), { openSession: scriptedEngine(script) });
    expect(defender.results[0]).toMatchObject({ select: 'defender', bestEpoch: 0, cacc: 0.8, asr: 0.2 });
    expect(attacker.results[0]).toMatchObject({ select: 'attacker', bestEpoch: 1, cacc: 0.7, asr: 0.9 });
  });
});

describe('session options', () => {
  it("pass the config's device, precision and attention to the engine", () => {
    expect(sessionOptions(config({ dataset: 'data' }), 'musclelora', '/m')).toMatchObject({ modelDir: '/m', device: 'cpu', precision: 'auto', attention: 'auto' });
    expect(sessionOptions(config({ dataset: 'data', device: 'cuda', precision: 'bf16', attention: 'flash' }), 'lora', '/m'))
      .toMatchObject({ device: 'cuda', precision: 'bf16', attention: 'flash' });
  });

  it('ask for CUDA graphs only when the config does (otherwise the engine follows MUSCLE_CUDA_GRAPHS)', () => {
    expect(sessionOptions(config({ dataset: 'data', device: 'cuda:1', cudaGraphs: true }), 'lora', '/m')).toMatchObject({ device: 'cuda:1', cudaGraphs: true });
    expect(sessionOptions(config({ dataset: 'data' }), 'lora', '/m')).not.toHaveProperty('cudaGraphs');
  });
});

describe('abort', () => {
  it('stops after the current step, frees the session and returns what finished', async () => {
    const log = newLog();
    const controller = new AbortController();
    const cfg = config({ dataset: scriptedDataset(), methods: ['vanilla', 'lora'], epochs: 3, batchSize: 4 });
    const run = await train(cfg, {
      openSession: scriptedEngine({ devAcc: [0.5, 0.6, 0.7], devAsr: [0, 0, 0], stepsPerEpoch: 3 }, log),
      signal: controller.signal,
      onProgress: (e) => e.type === 'step' && e.step === 5 && controller.abort(),
    });
    expect(run.aborted).toBe(true);
    expect(run.results).toEqual([expect.objectContaining({ method: 'vanilla', status: 'aborted', steps: 5, epochsCompleted: 1, bestEpoch: 0, cacc: null, asr: null })]);
    expect(log.steps).toHaveLength(5);
    expect(log.opened).toHaveLength(1); // lora never started
    expect(log.freed).toBe(1);
    expect(log.predictions).toBe(200); // epoch 0's dev evaluation only, no test
  });

  it('an abort during evaluation stops between evaluation batches', async () => {
    const controller = new AbortController();
    const log = newLog();
    const cfg = config({ dataset: scriptedDataset(), methods: ['vanilla'], epochs: 2, batchSize: 4 });
    const run = await train(cfg, {
      openSession: scriptedEngine({ devAcc: [0.5, 0.6], devAsr: [0, 0], stepsPerEpoch: 3 }, log),
      signal: controller.signal,
      onProgress: (e) => e.type === 'evaluate' && controller.abort(),
    });
    expect(run.results[0]).toMatchObject({ status: 'aborted', steps: 3, epochsCompleted: 0 });
    expect(log.predictions).toBe(0);
  });
});

describe('the loop on real SST-2 rows with a logistic-regression engine', () => {
  const base = { dataset: sst2, limit: 300, epochs: 3, batchSize: 32, lr: 2, ga: { refSize: 16 } } as const;

  it('trains each method in its own session, with the schedule, reference batches and records', async () => {
    const log = newLog();
    const records: MetricRecord[] = [];
    let flushes = 0;
    const events: ProgressEvent[] = [];
    const cfg = config({ ...base, methods: ['vanilla', 'musclelora'] });
    const run = await train(cfg, {
      openSession: logisticEngine(log),
      metrics: { write: (r) => records.push(r), flush: () => void flushes++ },
      onProgress: (e) => events.push(e),
    });

    // Sessions: full fine-tuning, then LoRA + MSLR with the paper's BERT settings.
    expect(log.opened.map((o) => o.train)).toEqual([
      { mode: 'full', trainHead: true },
      { mode: 'peft', lora: cfg.lora, mslr: cfg.mslr, trainHead: false },
    ]);
    expect(log.opened[0]).toMatchObject({ modelDir: cfg.model, numLabels: 2, maxLength: 512, seed: 42, device: 'cpu', dropout: true, optimizer: cfg.optimizer });
    expect(log.encoded).toBe(6); // the six splits, encoded once for both methods
    expect(log.freed).toBe(2);

    const stepsPerMethod = 3 * Math.ceil(300 / 32);
    const vanilla = log.steps.slice(0, stepsPerMethod);
    const muscle = log.steps.slice(stepsPerMethod);
    expect(muscle).toHaveLength(stepsPerMethod);

    // Linear decay from the peak without warm-up.
    expect(vanilla.map((s) => s.settings.lr).slice(0, 3)).toEqual([2, 2 * (29 / 30), 2 * (28 / 30)]);
    // Both methods see the same batches in the same order.
    expect(muscle.map((s) => [...s.batch.labels!])).toEqual(vanilla.map((s) => [...s.batch.labels!]));
    expect(vanilla.every((s) => s.ref === null && s.settings.ga === undefined)).toBe(true);

    // GA: a reference batch at every step (16 rows, batch 32: the whole set), rho by epoch: 0, 0, 0.05.
    expect(muscle.every((s) => s.ref !== null && s.ref.batch === 16)).toBe(true);
    expect([0, 10, 20].map((i) => muscle[i]!.settings.ga)).toEqual([null, 0, 0.05].map((rho) => ({ rule: 'gated', rho, minRefLoss: 0.4, minRefGradNorm: 5e-7 })));
    expect(new Set(muscle.map((s) => s.report.gaBranch))).not.toContain('none');

    // Evaluation on clean dev less the reference rows, every epoch.
    expect(events.filter((e) => e.type === 'epochEnd')).toHaveLength(6);
    expect(events.some((e) => e.type === 'warning')).toBe(false);

    // Records: a line per step, per epoch evaluation and per result; flushed every epoch and method.
    expect(records.filter((r) => r.type === 'step')).toHaveLength(2 * stepsPerMethod);
    expect(records.filter((r) => r.type === 'eval')).toHaveLength(6);
    expect(records.filter((r) => r.type === 'result')).toHaveLength(2);
    expect(flushes).toBe(8);
    const firstGaStep = records.find((r) => r.type === 'step' && r.method === 'musclelora');
    expect(firstGaStep).toMatchObject({ epoch: 0, step: 1, lr: 2, rho: null, refLoss: expect.any(Number), nRef: expect.any(Number) });

    for (const result of run.results) {
      expect(result.status).toBe('complete');
      expect(result.cacc).toBeGreaterThan(0.5); // bag of words learns something of SST-2
      expect(result.asr).toBeGreaterThanOrEqual(0);
      expect(result.confusion!.matrix.flat().reduce((a, b) => a + b, 0)).toBe(300);
    }
  });

  it("refBatches: all aligns to every reference sample at every step; batches of 8 cycle through 16 references", async () => {
    const all = newLog();
    await train(config({ ...base, epochs: 1, methods: ['lora+ga'], ga: { refSize: 40, refBatches: 'all' } }), { openSession: logisticEngine(all) });
    expect(all.steps.every((s) => s.ref!.batch === 40)).toBe(true);

    const one = newLog();
    await train(config({ ...base, epochs: 1, batchSize: 8, methods: ['ga'] }), { openSession: logisticEngine(one) });
    expect(one.steps.slice(0, 4).map((s) => s.ref!.batch)).toEqual([8, 8, 8, 8]);
    // Batches 0 and 2 use the same reference rows (the set holds two batches).
    expect([...one.steps[2]!.ref!.ids]).toEqual([...one.steps[0]!.ref!.ids]);
    expect([...one.steps[1]!.ref!.ids]).not.toEqual([...one.steps[0]!.ref!.ids]);
  });

  it('warns once when the engine reports a GA branch the rule does not give', async () => {
    const events: ProgressEvent[] = [];
    const engine = logisticEngine();
    const lying = async (opts: Parameters<typeof engine>[0]) => {
      const session = await engine(opts);
      const trainStep = session.trainStep.bind(session);
      session.trainStep = async (...args) => ({ ...(await trainStep(...args)), gaBranch: 'raw' as const, refLoss: 5, nRef: 1 });
      return session;
    };
    await train(config({ ...base, epochs: 1, methods: ['ga'] }), { openSession: lying, onProgress: (e) => events.push(e) });
    const warnings = events.filter((e) => e.type === 'warning');
    expect(warnings).toEqual([{ type: 'warning', message: "badnets/ga step 1: the engine took GA branch 'raw' where the gated rule gives 'projection' (refLoss 5, nRef 1, rho null)" }]);
  });

  it("passes the engine's own warnings on, each once, after the epoch that raised them", async () => {
    const events: ProgressEvent[] = [];
    const engine = logisticEngine();
    let epochs = 0;
    const warning = async (opts: Parameters<typeof engine>[0]) => {
      const session = await engine(opts);
      // the engine's contract: each warning once; the first epoch raises none, the second one
      session.engineWarnings = () => (++epochs === 2 ? ['CUDA graph mode turned itself off: a graph gave other results'] : []);
      return session;
    };
    await train(config({ ...base, epochs: 3, methods: ['lora'] }), { openSession: warning, onProgress: (e) => events.push(e) });
    const warnings = events.flatMap((e, i) => (e.type === 'warning' ? [[e.message, events[i - 1]?.type]] : []));
    expect(warnings).toEqual([['badnets/lora: CUDA graph mode turned itself off: a graph gave other results', 'epochEnd']]);
    expect(epochs).toBe(3);
  });

  it('a reference set as large as clean dev is an error naming the dev file', async () => {
    const err = await train(config({ ...base, limit: 20, methods: ['musclelora'], ga: { refSize: 20 } }), { openSession: logisticEngine() }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DataError);
    expect((err as Error).message).toBe(`${join(sst2, 'badnets', 'dev-clean.csv')}: ga.refSize 20 leaves no clean dev rows for model selection (20 rows after limit 20)`);
  });

  it('a model that is not on this machine fails before anything trains', async () => {
    const log = newLog();
    const hub = resolveConfig({ name: 't', model: 'bert-base-uncased', dataset: sst2, attacks: ['badnets'] }, { file: 'x.yaml' });
    // Online, a run downloads a hub id it lacks (hub.test.ts); offline it cannot.
    process.env['HF_HUB_OFFLINE'] = '1';
    const err = await train(hub, { openSession: logisticEngine(log) })
      .catch((e: unknown) => e)
      .finally(() => delete process.env['HF_HUB_OFFLINE']);
    expect(err).toBeInstanceOf(ModelNotFoundError);
    expect((err as Error).message).toBe(`model "bert-base-uncased" is neither a local directory nor complete in the hub cache (${process.env['HF_HUB_CACHE']}), and HF_HUB_OFFLINE=1 forbids downloading it; unset HF_HUB_OFFLINE or give a local path`);
    const path = resolveConfig({ name: 't', model: '/no/such/model', family: 'bert', dataset: sst2, attacks: ['badnets'] }, { file: 'x.yaml' });
    await expect(train(path, { openSession: logisticEngine(log) })).rejects.toThrowError(new ModelNotFoundError('model directory /no/such/model does not exist'));
    expect(log.opened).toHaveLength(0);
  });
});

describe('run directory', () => {
  it('writes the resolved config, metrics.jsonl and results, atomically', async () => {
    const dir = join(tempDir(), 'out');
    const cfg = config({ dataset: scriptedDataset(), methods: ['vanilla', 'lora'], epochs: 2, batchSize: 4 });
    await runInDirectory(cfg, dir, { openSession: scriptedEngine({ devAcc: [0.6, 0.9], devAsr: [0.5, 0.25], stepsPerEpoch: 3, device: 'cuda:0 (NVIDIA H100 80GB HBM3, sm_90)' }) });
    expect(readdirSync(dir).sort()).toEqual(['config.resolved.yaml', 'metrics.jsonl', 'results.json', 'results.md']);
    expect(readFileSync(join(dir, 'config.resolved.yaml'), 'utf8')).toContain('methods: [ vanilla, lora ]');
    const lines = readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as MetricRecord);
    expect(lines.map((l) => l.type)).toEqual(['step', 'step', 'step', 'eval', 'step', 'step', 'step', 'eval', 'result', ...['step', 'step', 'step', 'eval', 'step', 'step', 'step', 'eval', 'result']]);
    const results = JSON.parse(readFileSync(join(dir, 'results.json'), 'utf8'));
    expect(results.results.map((r: { method: string; cacc: number; device: string }) => [r.method, r.cacc, r.device])).toEqual([
      ['vanilla', 0.9, 'cuda:0 (NVIDIA H100 80GB HBM3, sm_90)'],
      ['lora', 0.9, 'cuda:0 (NVIDIA H100 80GB HBM3, sm_90)'],
    ]);
    expect(lines.filter((l) => l.type === 'result').map((l) => l.type === 'result' && l.device)).toEqual(['cuda:0 (NVIDIA H100 80GB HBM3, sm_90)', 'cuda:0 (NVIDIA H100 80GB HBM3, sm_90)']);
    expect(readFileSync(join(dir, 'results.md'), 'utf8')).toContain('| vanilla | defender | cuda:0 (NVIDIA H100 80GB HBM3, sm_90) | 90.00 | 25.00 |');
  });

  it('an aborted run leaves partial results', async () => {
    const dir = join(tempDir(), 'out');
    const controller = new AbortController();
    const cfg = config({ dataset: scriptedDataset(), methods: ['vanilla', 'lora'], epochs: 2, batchSize: 4 });
    const run = await runInDirectory(cfg, dir, {
      openSession: scriptedEngine({ devAcc: [0.6, 0.9], devAsr: [0.5, 0.25], stepsPerEpoch: 3 }),
      signal: controller.signal,
      onProgress: (e) => e.type === 'step' && e.method === 'lora' && e.step === 2 && controller.abort(),
    });
    expect(run.aborted).toBe(true);
    const md = readFileSync(join(dir, 'results.md'), 'utf8');
    expect(md).toContain('**The run was stopped early; the table is partial.**');
    expect(md).toContain('| vanilla | defender | – | 90.00 | 25.00 |');
    expect(md).toContain('| lora | defender | – | _stopped_ | _stopped_ |');
    expect(existsSync(join(dir, 'metrics.jsonl'))).toBe(true);
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });
});

import type { Attack, Method, RunConfig } from '../config/schema.js';
import { chunks, makeBatch } from '../data/batch.js';
import { DataError } from '../data/errors.js';
import type { AttackData } from '../data/layout.js';
import { rngFor, range, shuffled } from '../data/random.js';
import { splitReference } from '../data/reference.js';
import { loadRunData } from '../data/source.js';
import type { Example } from '../data/table.js';
import { openNativeSession } from '../engine/native.js';
import { ensureModelDir } from '../hub/model.js';
import { snapshotDownload } from '../hub/snapshot.js';
import type { Batch, EncodedTexts, OpenSession, Session, SessionOptions } from '../engine/session.js';
import { accuracy, asrRows, attackSuccessRate, confusion } from '../eval/metrics.js';
import { Aborted, predictLabels } from '../eval/predict.js';
import { expectedGaBranch, type GaBranch } from './gating.js';
import { STRATEGIES, trainSpec } from './methods.js';
import { gaSettings, learningRate } from './schedule.js';
import { selectionScore } from './selection.js';
import type { MethodResult, MetricsWriter, ProgressEvent, RunResults } from './types.js';

export interface TrainOptions {
  /** Opens an engine session; the native Rust engine by default (imported on first use). */
  openSession?: OpenSession;
  onProgress?: (event: ProgressEvent) => void;
  /** Aborting stops the run after the current step; the results so far are returned. */
  signal?: AbortSignal;
  metrics?: MetricsWriter;
  /** Called, and awaited, with the results so far after each method ends (to save partial results). */
  onResults?: (run: RunResults) => Promise<void> | void;
}

/** One attack's data, ready to train on: the reference set drawn out of clean dev, ASR rows filtered. */
interface AttackSplits {
  train: Example[];
  reference: Example[];
  dev: Example[];
  devPoison: Example[];
  test: Example[];
  testPoison: Example[];
}

type Encoded = { [K in keyof AttackSplits]: EncodedTexts };

function prepareAttack(config: RunConfig, data: AttackData): AttackSplits {
  const needsReference = config.methods.some((m) => STRATEGIES[m].ga);
  // The reference set is drawn for every method when any uses GA, so all rows are selected on the same dev set.
  if (needsReference && config.ga.refSize >= data.devClean.length) {
    throw new DataError(data.files.devClean, undefined, `ga.refSize ${config.ga.refSize} leaves no clean dev rows for model selection (${data.devClean.length} rows${config.limit ? ` after limit ${config.limit}` : ''})`);
  }
  const { reference, dev } = needsReference ? splitReference(data.devClean, config.ga.refSize, config.seed) : { reference: [], dev: data.devClean };
  return {
    train: data.train,
    reference,
    dev,
    devPoison: asrRows(data.devPoison, config.targetLabel),
    test: data.testClean,
    testPoison: asrRows(data.testPoison, config.targetLabel),
  };
}

async function encodeAll(session: Session, splits: AttackSplits): Promise<Encoded> {
  const out = {} as Encoded;
  for (const key of Object.keys(splits) as (keyof AttackSplits)[]) {
    const texts = splits[key].map((row) => row.text);
    const encoded = await session.encode(texts);
    if (encoded.offsets.length !== texts.length + 1) throw new Error(`engine encoded ${encoded.offsets.length - 1} of ${texts.length} texts`);
    out[key] = encoded;
  }
  return out;
}

function labelsOf(rows: readonly Example[]): Int32Array {
  return Int32Array.from(rows, (row) => row.label);
}

export function sessionOptions(config: RunConfig, method: Method, modelDir: string): SessionOptions {
  return {
    modelDir,
    numLabels: config.numLabels,
    maxLength: config.maxLength,
    seed: config.seed,
    device: config.device,
    precision: config.precision,
    attention: config.attention,
    // false leaves it to the engine (MUSCLE_CUDA_GRAPHS=1 turns graph mode on)
    ...(config.cudaGraphs && { cudaGraphs: true }),
    dropout: config.dropout,
    train: trainSpec(method, config),
    optimizer: { ...config.optimizer },
  };
}

/** Everything one method's training needs besides the session. */
interface MethodContext {
  config: RunConfig;
  attack: Attack;
  method: Method;
  splits: AttackSplits;
  encoded: Encoded;
  options: TrainOptions;
}

/** Trains one method on one attack: epochs of steps, best-on-dev selection, then the test evaluation. */
async function trainMethod(session: Session, ctx: MethodContext): Promise<MethodResult> {
  const { config, attack, method, splits, encoded, options } = ctx;
  const { signal, onProgress, metrics } = options;
  const emit = (event: ProgressEvent) => onProgress?.(event);
  const started = performance.now();
  const usesGa = STRATEGIES[method].ga;
  const batches = Math.ceil(splits.train.length / config.batchSize);
  const totalSteps = config.epochs * batches;
  const trainLabels = labelsOf(splits.train);
  const referenceLabels = labelsOf(splits.reference);
  const devLabels = labelsOf(splits.dev);
  const testLabels = labelsOf(splits.test);
  // Clean accuracy and attack success rate of the current weights.
  const evaluate = async (clean: EncodedTexts, labels: Int32Array, poisoned: EncodedTexts) => {
    const predicted = await predictLabels(session, clean, config.batchSize, signal);
    const asr = attackSuccessRate(await predictLabels(session, poisoned, config.batchSize, signal), config.targetLabel);
    return { acc: accuracy(predicted, labels), asr, predicted };
  };

  let step = 0;
  let epochsCompleted = 0;
  let best: { score: number; epoch: number; devAcc: number; devAsr: number } | null = null;
  let warnedBranch = false;

  const result = (status: MethodResult['status'], test?: { cacc: number; asr: number; confusion: MethodResult['confusion'] }): MethodResult => ({
    attack,
    method,
    select: config.select,
    status,
    cacc: test?.cacc ?? null,
    asr: test?.asr ?? null,
    bestEpoch: best?.epoch ?? null,
    devAcc: best?.devAcc ?? null,
    devAsr: best?.devAsr ?? null,
    epochsCompleted,
    steps: step,
    numTrainable: session.numTrainable,
    device: session.device ?? null,
    seconds: (performance.now() - started) / 1000,
    confusion: test?.confusion ?? null,
  });

  emit({ type: 'start', attack, method, epochs: config.epochs, stepsPerEpoch: batches, totalSteps, numTrainable: session.numTrainable, ...(session.device !== undefined && { device: session.device }) });
  try {
    for (let epoch = 0; epoch < config.epochs; epoch++) {
      // The same training order for every method of an attack: methods differ only in what they are.
      const order = chunks(shuffled(range(splits.train.length), rngFor(config.seed, 'train', attack, epoch)), config.batchSize);
      const ga = usesGa ? gaSettings(epoch, config.epochs, config.ga) : undefined;
      const references = usesGa ? referenceBatches(config, attack, epoch, encoded.reference, referenceLabels, session.padId) : [];
      const branches: Partial<Record<GaBranch, number>> = {};

      for (const [b, rows] of order.entries()) {
        const lr = learningRate(step, totalSteps, config.methodLr[method] ?? config.lr);
        const batch = makeBatch(encoded.train, rows, session.padId, trainLabels);
        // One reference batch per training batch, cycling through the (reshuffled) reference set.
        const ref = usesGa ? references[b % references.length]! : null;
        const report = await session.trainStep(batch, ref, ga ? { lr, ga } : { lr });
        step++;
        branches[report.gaBranch] = (branches[report.gaBranch] ?? 0) + 1;
        const expected = expectedGaBranch(ga, report.refLoss, report.nRef);
        if (expected !== report.gaBranch && !warnedBranch) {
          warnedBranch = true;
          emit({ type: 'warning', message: `${attack}/${method} step ${step}: the engine took GA branch '${report.gaBranch}' where the ${ga?.rule ?? 'no-GA'} rule gives '${expected}' (refLoss ${report.refLoss}, nRef ${report.nRef}, rho ${ga?.rho ?? null})` });
        }
        metrics?.write({ type: 'step', attack, method, epoch, step, lr, rho: ga ? ga.rho : null, ...report });
        emit({ type: 'step', attack, method, epoch, step, totalSteps, loss: report.loss, lr, gaBranch: report.gaBranch });
        if (signal?.aborted) return result('aborted');
      }

      emit({ type: 'evaluate', attack, method, epoch, split: 'dev' });
      const { acc: devAcc, asr: devAsr } = await evaluate(encoded.dev, devLabels, encoded.devPoison);
      const score = selectionScore(config.select, devAcc, devAsr);
      const improved = best === null || score > best.score;
      if (improved) {
        await session.snapshot();
        best = { score, epoch, devAcc, devAsr };
      }
      epochsCompleted++;
      metrics?.write({ type: 'eval', attack, method, epoch, devAcc, devAsr, score, best: improved, gaBranches: branches });
      await metrics?.flush?.();
      emit({ type: 'epochEnd', attack, method, epoch, devAcc, devAsr, score, best: improved });
      for (const message of session.engineWarnings?.() ?? []) emit({ type: 'warning', message: `${attack}/${method}: ${message}` });
    }

    // The snapshot is the current state when the last epoch was the best.
    if (best && best.epoch !== config.epochs - 1) await session.restore();
    emit({ type: 'evaluate', attack, method, epoch: null, split: 'test' });
    const test = await evaluate(encoded.test, testLabels, encoded.testPoison);
    return result('complete', { cacc: test.acc, asr: test.asr, confusion: confusion(test.predicted, testLabels, config.numLabels) });
  } catch (err) {
    if (err instanceof Aborted) return result('aborted');
    throw err;
  }
}

/** This epoch's reference batches: the reference set reshuffled, in training-sized batches, or all of it at once. */
function referenceBatches(config: RunConfig, attack: Attack, epoch: number, encoded: EncodedTexts, labels: Int32Array, padId: number): Batch[] {
  const order = shuffled(range(labels.length), rngFor(config.seed, 'reference-order', attack, epoch));
  const size = config.ga.refBatches === 'all' ? order.length : config.batchSize;
  return chunks(order, size).map((rows) => makeBatch(encoded, rows, padId, labels));
}

/**
 * Runs the experiment: every method on every attack, each in its own engine session, and returns the
 * results. Inputs are checked before anything trains, so a typo in the last attack's files fails at once.
 */
export async function train(config: RunConfig, options: TrainOptions = {}): Promise<RunResults> {
  const results: MethodResult[] = [];
  const run = (aborted: boolean): RunResults => ({
    name: config.name,
    model: config.model,
    family: config.family,
    poisonRate: config.poisonRate,
    targetLabel: config.targetLabel,
    aborted,
    results,
  });
  // Every attack's data is read (a registry dataset downloaded first) and checked before the model is fetched.
  // A hub id that is not cached yet is downloaded now (not under HF_HUB_OFFLINE=1); Ctrl-C during it stops the run.
  let modelDir: string;
  const prepared = new Map<Attack, AttackSplits>();
  try {
    const data = await loadRunData(config, {
      download: (request) => snapshotDownload({ ...request, onProgress: (event) => options.onProgress?.({ type: 'download', event }) }),
      ...(options.signal && { signal: options.signal }),
    });
    for (const message of data.warnings) options.onProgress?.({ type: 'warning', message });
    for (const [attack, attackData] of data.attacks) prepared.set(attack, prepareAttack(config, attackData));
    modelDir = await ensureModelDir(config.model, { onProgress: (event) => options.onProgress?.({ type: 'download', event }), ...(options.signal && { signal: options.signal }) });
  } catch (err) {
    if (options.signal?.aborted) return run(true);
    throw err;
  }
  const open = options.openSession ?? openNativeSession;

  for (const attack of config.attacks) {
    const splits = prepared.get(attack)!;
    let encoded: Encoded | undefined; // the tokenizer is the model's: encode once per attack, reuse for every method
    for (const method of config.methods) {
      if (options.signal?.aborted) return run(true);
      const session = await open(sessionOptions(config, method, modelDir));
      let result: MethodResult;
      try {
        encoded ??= await encodeAll(session, splits);
        result = await trainMethod(session, { config, attack, method, splits, encoded, options });
      } finally {
        session.free();
      }
      results.push(result);
      options.metrics?.write({ type: 'result', ...result });
      await options.metrics?.flush?.();
      options.onProgress?.({ type: 'result', result });
      await options.onResults?.(run(result.status === 'aborted'));
      if (result.status === 'aborted') return run(true);
    }
  }
  return run(false);
}

import type { Attack, Method, RunConfig } from '../config/schema.js';
import type { Confusion } from '../eval/metrics.js';
import type { StepReport } from '../engine/session.js';
import type { HubProgressEvent } from '../hub/events.js';
import type { GaBranch } from './gating.js';

/** The outcome of training one method on one attack. Metrics of nothing (empty sets) are NaN, null in JSON. */
export interface MethodResult {
  attack: Attack;
  method: Method;
  /** The checkpoint selection rule this row used. */
  select: RunConfig['select'];
  /** 'aborted': stopped before the test evaluation; test metrics are null. */
  status: 'complete' | 'aborted';
  /** Clean accuracy on the test split, of the selected checkpoint. */
  cacc: number | null;
  /** Attack success rate on the poisoned test split, of the selected checkpoint. */
  asr: number | null;
  /** Epoch (from 0) of the selected checkpoint, and its dev scores. */
  bestEpoch: number | null;
  devAcc: number | null;
  devAsr: number | null;
  epochsCompleted: number;
  steps: number;
  numTrainable: number;
  /** Where the engine ran this method, as its session reports it (e.g. `cpu (2 threads)`); null when it does not say. */
  device: string | null;
  seconds: number;
  /** Per-class view of the clean test predictions. */
  confusion: Confusion | null;
}

export interface RunResults {
  name: string;
  model: string;
  family: RunConfig['family'];
  poisonRate: number;
  targetLabel: number;
  /** True when the run was stopped early: `results` then holds what finished, the last row maybe 'aborted'. */
  aborted: boolean;
  results: MethodResult[];
}

interface Where {
  attack: Attack;
  method: Method;
}

export type ProgressEvent =
  /** `device`: where the session runs, when the engine says (Session.device). */
  | (Where & { type: 'start'; epochs: number; stepsPerEpoch: number; totalSteps: number; numTrainable: number; device?: string })
  | (Where & { type: 'step'; epoch: number; step: number; totalSteps: number; loss: number; lr: number; gaBranch: GaBranch })
  | (Where & { type: 'evaluate'; epoch: number | null; split: 'dev' | 'test' })
  | (Where & { type: 'epochEnd'; epoch: number; devAcc: number; devAsr: number; score: number; best: boolean })
  | { type: 'result'; result: MethodResult }
  | { type: 'warning'; message: string }
  /** The model is being fetched from the hub before anything trains. */
  | { type: 'download'; event: HubProgressEvent };

/** One line of metrics.jsonl. */
export type MetricRecord =
  | (Where & { type: 'step'; epoch: number; step: number; lr: number; rho: number | null } & StepReport)
  | (Where & { type: 'eval'; epoch: number; devAcc: number; devAsr: number; score: number; best: boolean; gaBranches: Partial<Record<GaBranch, number>> })
  | ({ type: 'result' } & MethodResult);

export interface MetricsWriter {
  write(record: MetricRecord): void;
  /** Called at every epoch end and when the run ends. */
  flush?(): Promise<void> | void;
}

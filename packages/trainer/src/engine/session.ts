// The contract between the trainer and the Rust engine (`@musclelora/core-native` implements it).
// Everything per-tensor stays inside the engine; one call per optimisation step crosses N-API.

export interface EncodedTexts { ids: Int32Array; offsets: Int32Array } // ragged: text i is ids[offsets[i]..offsets[i+1]], with special tokens, truncated to maxLength
export interface Batch { ids: Int32Array; mask: Int32Array; labels?: Int32Array; batch: number; seq: number } // row-major [batch, seq], padded with padId, mask 1/0
export type GaRule = 'gated' | 'paper';
export interface GaSettings { rule: GaRule; rho: number | null; minRefLoss: number; minRefGradNorm: number }
// gated (reference code): if nRef > minRefGradNorm && refLoss > minRefLoss -> projection alone; else if rho !== null -> (1-rho)*proj + rho*g (rho 0 = projection); else keep g. (The trainer computes rho per epoch: maxRawGradRatio*(epoch-GAEpoch)/(epochs-GAEpoch) when maxRawGradRatio > 0 and epoch >= GAEpoch, else null.)
// paper: always (1-rho)*proj + rho*g.
export interface StepSettings { lr: number; ga?: GaSettings }
export interface StepReport { loss: number; refLoss: number | null; gradNorm: number; refGradNorm: number | null; nRef: number | null; projected: number; gaBranch: 'none' | 'projection' | 'mixed' | 'raw'; clippedNorm: number }
export interface TrainSpec {
  mode: 'full' | 'peft';            // full = every weight trains (vanilla, ga); peft = only adapters (+ head if trainHead)
  lora?: { r: number; alpha: number; dropout: number; targets: string[] };
  mslr?: { band: number[]; rank: number; alpha: number; dropout: number };
  trainHead: boolean;
}
export interface SessionOptions { modelDir: string; numLabels: number; maxLength: number; seed: number; device: 'cpu' | 'cuda' | 'auto' | `cuda:${number}`; precision?: 'auto' | 'f32' | 'bf16'; attention?: 'auto' | 'standard' | 'flash'; cudaGraphs?: boolean; threads?: number; dropout: boolean; train: TrainSpec; optimizer: { weightDecay: number; beta1: number; beta2: number; eps: number; maxGradNorm: number } }
export interface Session {
  readonly padId: number; readonly numLabels: number; readonly numTrainable: number;
  readonly device?: string;   // where it runs, e.g. 'cpu (2 threads)' or 'cuda:0 (NVIDIA H100 80GB HBM3, sm_90, bf16)'; absent in test fakes
  encode(texts: string[]): Promise<EncodedTexts>;
  trainStep(batch: Batch, ref: Batch | null, step: StepSettings): Promise<StepReport>;
  predict(batch: Batch): Promise<Float32Array>;   // logits [batch * numLabels]
  snapshot(): Promise<void>;  // keep a copy of the trainable tensors (best-on-dev selection)
  restore(): Promise<void>;   // put the snapshot back
  engineWarnings?(): string[]; // what the engine has to say about how it runs, each once (a GPU's graph mode turning itself off); absent in test fakes
  free(): void;
}
export type OpenSession = (opts: SessionOptions) => Promise<Session>;

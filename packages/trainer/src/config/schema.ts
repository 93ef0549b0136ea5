import * as z from 'zod';
import { poisonSectionSchema, type PoisonSection } from '../attacks/options.js';
import { datasetSchema, type DatasetSpec } from './dataset.js';

// The run configuration as a user writes it (YAML). Every key but the first four is optional: what is left
// out comes from the model family's defaults (defaults.ts), so `model: roberta-base` alone picks the paper's
// band, ranks and rates. The descriptions double as documentation: `muscle run --help` lists them.

export const ATTACKS = ['badnets', 'addsent', 'hiddenkiller', 'stylebkd'] as const;
export type Attack = (typeof ATTACKS)[number];

/** The paper's method and its ablations (ALGORITHM.md, "Ablations and baselines"). */
export const METHODS = ['vanilla', 'lora', 'ga', 'lora+ms', 'lora+ga', 'musclelora'] as const;
export type Method = (typeof METHODS)[number];

export const FAMILIES = ['bert', 'roberta', 'llama', 'gpt2'] as const;
export type Family = (typeof FAMILIES)[number];

/** The device words; `cuda:N` (GPU N, as the driver numbers them) is accepted besides (isDevice). */
export const DEVICES = ['cpu', 'cuda', 'auto'] as const;
export type Device = (typeof DEVICES)[number] | `cuda:${number}`;
export const DEVICE_WORDS = 'cpu, cuda, cuda:N (GPU N, from 0), auto';
/** cpu, cuda (GPU 0), cuda:N (digits, no leading zero: the engine parses it the same way) or auto. */
export function isDevice(value: unknown): value is Device {
  return typeof value === 'string' && ((DEVICES as readonly string[]).includes(value) || /^cuda:(0|[1-9][0-9]{0,5})$/.test(value));
}

export const PRECISIONS = ['auto', 'f32', 'bf16'] as const;
export type Precision = (typeof PRECISIONS)[number];
export const ATTENTIONS = ['auto', 'standard', 'flash'] as const;
export type Attention = (typeof ATTENTIONS)[number];

const positive = () => z.number().gt(0);
const probability = () => z.number().min(0).lt(1);

export const loraSchema = z.strictObject({
  r: z.int().min(1).optional().describe('LoRA rank r (paper: 8 for BERT/RoBERTa, 2 for Llama/GPT-2)'),
  alpha: positive().optional().describe('LoRA scaling alpha; the update is scaled by alpha / r (32, or 8 for Llama/GPT-2)'),
  dropout: probability().optional().describe('dropout on the LoRA input (0)'),
  targets: z.array(z.string().min(1)).min(1).optional().describe('linear layers that get LoRA (query, value; q_proj, v_proj; c_attn)'),
});

export const mslrSchema = z.strictObject({
  band: z.array(positive()).min(1).optional().describe('radial scaling factors s_1..s_n of the multi-scale branch (per model, e.g. bert-base [1,4,...,28])'),
  rank: z.int().min(1).optional().describe('inner rank k: each scaling factor is repeated k times (1)'),
  alpha: positive().optional().describe('scaling alpha_m; the branch is scaled by alpha_m / k (6, or 4 for Llama/GPT-2)'),
  dropout: probability().optional().describe('dropout on the branch input (0)'),
});

export const gaSchema = z.strictObject({
  refSize: z.int().min(1).optional().describe('trusted clean reference samples drawn from (and removed from) clean dev (96, or 128 for Llama/GPT-2)'),
  rule: z.enum(['gated', 'paper']).optional().describe("'gated' = the reference code's rule (default), 'paper' = always (1-rho) a + rho g"),
  rhoMax: z.number().min(0).max(1).optional().describe("paper rule: rho rises linearly from 0 at the first epoch to rhoMax at the last (0.1, or 0 for Llama/GPT-2)"),
  minRefLoss: z.number().min(0).optional().describe('gated rule: project alone only while the reference loss exceeds this (0.4, or 0 for Llama/GPT-2)'),
  minRefGradNorm: z.number().min(0).optional().describe('gated rule: ... and the mean reference gradient norm exceeds this (5e-7)'),
  gaEpoch: z.int().min(0).optional().describe('gated rule: first epoch (from 0) that mixes in the raw gradient (1, or 0 for Llama/GPT-2)'),
  maxRawGradRatio: z.number().min(0).max(1).optional().describe('gated rule: rho = maxRawGradRatio * (epoch - gaEpoch) / (epochs - gaEpoch) (0.1, or 0 for Llama/GPT-2)'),
  refBatches: z.enum(['one', 'all']).optional().describe("'one' reference batch per training batch (default), or 'all' reference samples at every step"),
});

export const optimizerSchema = z.strictObject({
  weightDecay: z.number().min(0).optional().describe('AdamW decoupled weight decay; never applied to biases and LayerNorm weights (0)'),
  beta1: probability().optional().describe('AdamW beta1 (0.9)'),
  beta2: probability().optional().describe('AdamW beta2 (0.999)'),
  eps: positive().optional().describe('AdamW epsilon (1e-8)'),
  maxGradNorm: positive().optional().describe('global gradient-norm clipping after gradient alignment (1.0)'),
});

export const rawConfigSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, { error: 'expected letters, digits, ., _ or -, starting with a letter or digit' }).describe('run name: results go to <out>/<name>/ (letters, digits, . _ -)'),
  model: z.string().min(1).describe('Hugging Face hub id or local model directory (relative paths are relative to the config file)'),
  family: z.enum(FAMILIES).optional().describe("model family; detected from config.json's model_type or the model name when left out"),
  dataset: datasetSchema,
  attacks: z.array(z.enum(ATTACKS)).min(1).describe('attacks to defend against, one poisoned training set each'),
  methods: z.array(z.enum(METHODS)).min(1).optional().describe('methods to train, each on every attack (musclelora)'),
  poisonRate: z.number().gt(0).max(1).optional().describe('poisoned share of the training set; selects <attack>/train-poison-<rate>.csv, 1 = train-poison-all.csv (0.1)'),
  targetLabel: z.int().min(0).optional().describe("the attacker's target label (1)"),
  numLabels: z.int().min(2).optional().describe('number of classes (2)'),
  epochs: z.int().min(1).optional().describe('training epochs (10, or 5 for Llama/GPT-2)'),
  batchSize: z.int().min(1).optional().describe('training batch size (32, or 16 for Llama/GPT-2)'),
  maxLength: z.int().min(2).optional().describe('maximum tokens per text, special tokens included (512)'),
  lr: positive().optional().describe('peak learning rate, decayed linearly to 0 without warm-up (2e-5, or 1e-5 for Llama/GPT-2)'),
  methodLr: z.partialRecord(z.enum(METHODS), positive()).optional().describe('peak learning rate per method, overriding lr (full fine-tuning usually needs a lower one than adapters), e.g. { vanilla: 5.0e-5 }'),
  seed: z.int().min(0).max(0xffffffff).optional().describe('seed of shuffling, reference draw and initialisation (42)'),
  device: z.custom<Device>(isDevice, { message: `expected one of ${DEVICE_WORDS}` }).optional().describe("where the engine runs: 'cpu', 'cuda' (GPU 0), 'cuda:N' (GPU N), or 'auto', GPU 0 when a driver is found (auto)"),
  precision: z.enum(PRECISIONS).optional().describe("GPU GEMMs with frozen weights: 'bf16' keeps those weights in bf16 (tensor cores, f32 accumulation; adapters, gradients and AdamW stay f32), 'f32' matches the CPU; 'auto' = bf16 on a GPU, f32 on the CPU (auto)"),
  attention: z.enum(ATTENTIONS).optional().describe("encoder self-attention: 'standard' keeps each layer's probabilities [batch, heads, length, length] for the backward; 'flash' keeps none and recomputes them (far less memory for long rows, slower kernels); 'auto' = flash only where standard attention's probabilities would pass 4 GiB, e.g. BERT-base at 32 x 512 (auto)"),
  cudaGraphs: z.boolean().optional().describe('on a GPU, issue each training step as CUDA graphs instead of call by call (fewer launches; each graph is checked against its calls on its first launch, and graph mode turns itself off with a warning if they differ); MUSCLE_CUDA_GRAPHS=1 turns it on too (false)'),
  select: z.enum(['defender', 'attacker']).optional().describe("checkpoint selection: 'defender' = best clean dev accuracy; 'attacker' = best mean of clean dev accuracy and poisoned dev ASR (defender)"),
  limit: z.int().min(1).optional().describe('use N rows of each split, drawn at random (seeded) so that poisoned rows keep their share (quick runs)'),
  lora: loraSchema.optional().describe('low-rank adaptation on the frozen backbone (LR)'),
  mslr: mslrSchema.optional().describe('multiple radial scalings at the penultimate linear layer (MS)'),
  ga: gaSchema.optional().describe('gradient alignment to the clean reference set (GA)'),
  trainHead: z.boolean().optional().describe('with LoRA, also train the classification head (the paper keeps it frozen: false)'),
  optimizer: optimizerSchema.optional().describe('AdamW and clipping'),
  dropout: z.boolean().optional().describe("the model's own dropout during training, reference passes included (true)"),
  poison: poisonSectionSchema.optional().describe('poison in memory, with seed, poisonRate and targetLabel, each attack whose <attack>/ folder the dataset lacks (badnets and addsent need nothing here; hiddenkiller and stylebkd need paraphrase files)'),
});

export type RawConfig = z.infer<typeof rawConfigSchema>;

type Filled<T> = { [K in keyof T]-?: Exclude<T[K], undefined> };

/** The fully resolved configuration: every key present (but `limit`), paths absolute. */
export interface RunConfig extends Omit<Filled<RawConfig>, 'dataset' | 'lora' | 'mslr' | 'ga' | 'optimizer' | 'limit' | 'methodLr' | 'poison'> {
  /** A layout directory, a registry dataset, or the user's clean files (paths absolute). */
  dataset: DatasetSpec;
  limit?: number;
  poison?: PoisonSection;
  methodLr: Partial<Record<Method, number>>;
  lora: Filled<z.infer<typeof loraSchema>>;
  mslr: Filled<z.infer<typeof mslrSchema>>;
  ga: Filled<z.infer<typeof gaSchema>>;
  optimizer: Filled<z.infer<typeof optimizerSchema>>;
}

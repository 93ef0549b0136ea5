import type { Family, RunConfig } from './schema.js';

// The paper's unified hyperparameters and the reference code's per-model tables (ALGORITHM.md).

type Defaults = Omit<RunConfig, 'name' | 'model' | 'family' | 'dataset' | 'attacks' | 'limit'>;

/** MSLR frequency bands of the reference code, by model. */
export const MSLR_BANDS = {
  'bert-base': [1, 4, 8, 12, 16, 20, 24, 28],
  'roberta-base': [1, 2, 4, 6, 8, 10, 12, 14, 16],
  large: [1, 2, 3, 4, 5, 6, 7, 8, 9],
  decoder: [1, 2, 3, 4],
} as const;

const LORA_TARGETS: Record<Family, string[]> = {
  bert: ['query', 'value'],
  roberta: ['query', 'value'],
  llama: ['q_proj', 'v_proj'],
  gpt2: ['c_attn'],
};

/**
 * The band for a model: by name where the reference code has one (`*-large` = bert-large, roberta-large),
 * else the base band of its family (e.g. all-MiniLM-L6-v2, a BERT, gets bert-base's).
 */
export function mslrBand(model: string, family: Family): number[] {
  if (family === 'llama' || family === 'gpt2') return [...MSLR_BANDS.decoder];
  const name = model.toLowerCase().split(/[\\/]/).pop() ?? '';
  if (/(^|[-_])large($|[-_])/.test(name)) return [...MSLR_BANDS.large];
  return [...(family === 'roberta' ? MSLR_BANDS['roberta-base'] : MSLR_BANDS['bert-base'])];
}

/** Defaults for every optional key, given the model family (decoders follow the paper's Llama column). */
export function defaultsFor(model: string, family: Family): Defaults {
  const decoder = family === 'llama' || family === 'gpt2';
  return {
    methods: ['musclelora'],
    poisonRate: 0.1,
    targetLabel: 1,
    numLabels: 2,
    epochs: decoder ? 5 : 10,
    batchSize: decoder ? 16 : 32,
    maxLength: 512,
    lr: decoder ? 1e-5 : 2e-5,
    methodLr: {},
    seed: 42,
    device: 'auto',
    precision: 'auto',
    attention: 'auto',
    cudaGraphs: false,
    select: 'defender',
    lora: { r: decoder ? 2 : 8, alpha: decoder ? 8 : 32, dropout: 0, targets: [...LORA_TARGETS[family]] },
    mslr: { band: mslrBand(model, family), rank: 1, alpha: decoder ? 4 : 6, dropout: 0 },
    ga: decoder
      ? { refSize: 128, rule: 'gated', rhoMax: 0, minRefLoss: 0, minRefGradNorm: 5e-7, gaEpoch: 0, maxRawGradRatio: 0, refBatches: 'one' }
      : { refSize: 96, rule: 'gated', rhoMax: 0.1, minRefLoss: 0.4, minRefGradNorm: 5e-7, gaEpoch: 1, maxRawGradRatio: 0.1, refBatches: 'one' },
    trainHead: false,
    optimizer: { weightDecay: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, maxGradNorm: 1.0 },
    dropout: true,
  };
}

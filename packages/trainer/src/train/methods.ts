import type { Method, RunConfig } from '../config/schema.js';
import type { TrainSpec } from '../engine/session.js';

/** Which of the paper's three strategies a method combines (ALGORITHM.md, "Ablations and baselines"). */
export interface Strategies {
  /** LR: LoRA on a frozen backbone. */
  lr: boolean;
  /** MS: multiple radial scalings at the penultimate linear layer. */
  ms: boolean;
  /** GA: gradient alignment to the clean reference set. */
  ga: boolean;
}

export const STRATEGIES: Record<Method, Strategies> = {
  vanilla: { lr: false, ms: false, ga: false },
  lora: { lr: true, ms: false, ga: false },
  ga: { lr: false, ms: false, ga: true },
  'lora+ms': { lr: true, ms: true, ga: false },
  'lora+ga': { lr: true, ms: false, ga: true },
  musclelora: { lr: true, ms: true, ga: true },
};

/**
 * What trains. Without LoRA every weight trains (full fine-tuning: vanilla, ga). With LoRA the backbone is
 * frozen and only the adapters train (LoRA's A, B and, with MS, MSLR's L, R), plus the head if asked.
 */
export function trainSpec(method: Method, config: Pick<RunConfig, 'lora' | 'mslr' | 'trainHead'>): TrainSpec {
  const { lr, ms } = STRATEGIES[method];
  if (!lr) return { mode: 'full', trainHead: true };
  return {
    mode: 'peft',
    lora: { ...config.lora, targets: [...config.lora.targets] },
    ...(ms && { mslr: { ...config.mslr, band: [...config.mslr.band] } }),
    trainHead: config.trainHead,
  };
}

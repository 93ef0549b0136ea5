import { describe, expect, it } from 'vitest';
import { defaultsFor } from '../src/config/defaults.js';
import type { RunConfig } from '../src/config/schema.js';
import { expectedGaBranch, gaSettings, learningRate, rho, selectionScore, STRATEGIES, trainSpec } from '../src/train/index.js';

const bertGa = defaultsFor('bert-base-uncased', 'bert').ga; // gated, gaEpoch 1, maxRawGradRatio 0.1, minRefLoss 0.4
const llamaGa = defaultsFor('llama-2-7b', 'llama').ga; // gated, gaEpoch 0, maxRawGradRatio 0, minRefLoss 0

describe('learning rate: linear decay to 0, no warm-up', () => {
  it('matches hand-computed values over 10 steps from 2e-5', () => {
    expect(learningRate(0, 10, 2e-5)).toBe(2e-5);
    expect(learningRate(1, 10, 2e-5)).toBeCloseTo(1.8e-5, 15);
    expect(learningRate(5, 10, 2e-5)).toBeCloseTo(1e-5, 15);
    expect(learningRate(9, 10, 2e-5)).toBeCloseTo(2e-6, 15);
    expect(learningRate(10, 10, 2e-5)).toBe(0);
    expect(learningRate(12, 10, 2e-5)).toBe(0);
  });
});

describe('rho: the share of the raw gradient', () => {
  it('gated (reference code): maxRawGradRatio * (epoch - gaEpoch) / (epochs - gaEpoch), 0 before gaEpoch', () => {
    // BERT defaults over the paper's 10 epochs: 0, 0, 0.1*1/9, ..., 0.1*8/9
    expect(rho(0, 10, bertGa)).toBeNull(); // before GAEpoch: a closed gate keeps g
    expect(rho(1, 10, bertGa)).toBe(0); // at GAEpoch: mixing with rho 0 is the projection
    expect(rho(2, 10, bertGa)).toBeCloseTo(0.1 / 9, 15);
    expect(rho(5, 10, bertGa)).toBeCloseTo(0.4 / 9, 15);
    expect(rho(9, 10, bertGa)).toBeCloseTo(0.8 / 9, 15);
    // gaEpoch 3 over 5 epochs: 0 0 0 0 0.05
    expect([0, 1, 2, 3, 4].map((e) => rho(e, 5, { ...bertGa, gaEpoch: 3 }))).toEqual([null, null, null, 0, 0.05]);
  });

  it('Llama: always 0 (pure alignment)', () => {
    expect([0, 1, 2, 3, 4].map((e) => rho(e, 5, llamaGa))).toEqual([null, null, null, null, null]);
  });

  it('paper rule: from 0 at the first epoch to rhoMax at the last', () => {
    const paper: RunConfig['ga'] = { ...bertGa, rule: 'paper', rhoMax: 0.1 };
    [0, 0.025, 0.05, 0.075, 0.1].forEach((value, epoch) => expect(rho(epoch, 5, paper)).toBeCloseTo(value, 15));
    expect(rho(0, 1, paper)).toBe(0);
  });

  it('gaSettings carries the rule, rho and both gates to the engine', () => {
    expect(gaSettings(2, 10, bertGa)).toEqual({ rule: 'gated', rho: 0.1 / 9, minRefLoss: 0.4, minRefGradNorm: 5e-7 });
  });
});

describe('GA gating decisions', () => {
  const gated = (rhoValue: number | null) => ({ rule: 'gated' as const, rho: rhoValue, minRefLoss: 0.4, minRefGradNorm: 5e-7 });

  it('gated: projection alone while the reference loss and gradient are both above their floors', () => {
    expect(expectedGaBranch(gated(0), 0.7, 1e-3)).toBe('projection');
    expect(expectedGaBranch(gated(0.05), 0.41, 6e-7)).toBe('projection');
  });

  it('gated: once the reference set is learned, mix in rho of the raw gradient, or keep it when rho is null', () => {
    expect(expectedGaBranch(gated(0.05), 0.4, 1e-3)).toBe('mixed'); // loss not above 0.4
    expect(expectedGaBranch(gated(0.05), 0.7, 5e-7)).toBe('mixed'); // gradient norm not above 5e-7
    expect(expectedGaBranch(gated(0), 0.3, 1e-3)).toBe('mixed'); // at GAEpoch: rho 0, the projection
    expect(expectedGaBranch(gated(null), 0.3, 1e-3)).toBe('raw');
    expect(expectedGaBranch(gated(null), 0.7, 0)).toBe('raw');
  });

  it('Llama settings (minRefLoss 0) project whenever the reference loss is positive', () => {
    const llama = gaSettings(3, 5, llamaGa);
    expect(expectedGaBranch(llama, 1e-6, 1e-3)).toBe('projection');
    expect(expectedGaBranch(llama, 0, 1e-3)).toBe('raw');
  });

  it('paper: always mixed; no GA: none', () => {
    expect(expectedGaBranch({ ...gated(0), rule: 'paper' }, 0.1, 0)).toBe('mixed');
    expect(expectedGaBranch(undefined, null, null)).toBe('none');
  });
});

describe('methods: the ablation table', () => {
  const config = defaultsFor('bert-base-uncased', 'bert');

  it('vanilla and ga train every weight; the LoRA methods only adapters', () => {
    expect(trainSpec('vanilla', config)).toEqual({ mode: 'full', trainHead: true });
    expect(trainSpec('ga', config)).toEqual({ mode: 'full', trainHead: true });
    expect(trainSpec('lora', config)).toEqual({ mode: 'peft', lora: { r: 8, alpha: 32, dropout: 0, targets: ['query', 'value'] }, trainHead: false });
    expect(trainSpec('lora+ga', config)).toEqual(trainSpec('lora', config));
    const ms = { band: [1, 4, 8, 12, 16, 20, 24, 28], rank: 1, alpha: 6, dropout: 0 };
    expect(trainSpec('lora+ms', config)).toEqual({ ...trainSpec('lora', config), mslr: ms });
    expect(trainSpec('musclelora', { ...config, trainHead: true })).toEqual({ mode: 'peft', lora: config.lora, mslr: ms, trainHead: true });
  });

  it('GA is on for ga, lora+ga and musclelora', () => {
    expect(Object.entries(STRATEGIES).filter(([, s]) => s.ga).map(([m]) => m)).toEqual(['ga', 'lora+ga', 'musclelora']);
  });
});

describe('checkpoint selection', () => {
  it('defender: clean dev accuracy; attacker: the mean with poisoned dev ASR', () => {
    expect(selectionScore('defender', 0.8, 0.9)).toBe(0.8);
    expect(selectionScore('attacker', 0.8, 0.9)).toBeCloseTo(0.85, 15);
  });
});

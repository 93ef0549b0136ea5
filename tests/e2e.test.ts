// End to end through `muscle run` (the CLI's own entry, in process) and the real Rust engine on
// real SST-2 rows from ../shared: every method on the tiny fixture model, and a short MuScleLoRA
// run on the real all-MiniLM-L6-v2 that must learn the task.
import { EventEmitter } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { main, EXIT } from '../packages/cli/src/program.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const sst2 = path.resolve(repo, '..', 'shared', 'data', 'sst-2');
const minilm = process.env['MUSCLE_MINILM'] ?? path.join(repo, '.cache', 'models', 'all-MiniLM-L6-v2');
const haveMinilm = existsSync(path.join(minilm, 'model.safetensors'));
if (!haveMinilm && process.env['MUSCLE_REQUIRE_MINILM'] === '1') {
  throw new Error(`${minilm}: all-MiniLM-L6-v2 is missing; run \`pnpm models\``);
}

async function muscleRun(yaml: string): Promise<{ code: number; out: string; dir: string; stderr: string }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'muscle-e2e-'));
  const config = path.join(dir, 'run.yaml');
  writeFileSync(config, yaml);
  let stderr = '';
  const code = await main(['node', 'muscle', 'run', config, '--out', path.join(dir, 'runs')], {
    stdout: { write: () => true },
    stderr: { write: (s: string) => ((stderr += s), true) },
    signals: new EventEmitter() as never,
  });
  return { code, out: path.join(dir, 'runs'), dir, stderr };
}

interface Row { method: string; attack: string; cacc: number; asr: number; status: string; steps: number; numTrainable: number; device: string | null }

describe('muscle run, end to end on the Rust engine', () => {
  it('runs every method on a tiny BERT over real SST-2 BadNets rows and writes its files', async () => {
    const yaml = [
      'name: tiny-all',
      `model: ${path.join(repo, 'tests/fixtures/tiny-bert')}`,
      `dataset: ${sst2}`,
      'attacks: [badnets]',
      'methods: [vanilla, lora, ga, lora+ms, lora+ga, musclelora]',
      'epochs: 2',
      'limit: 300',
      'batchSize: 16',
      'maxLength: 32',
      'lr: 1.0e-3',
      'device: cpu',
      'seed: 3',
      'ga: { refSize: 32 }',
    ].join('\n');
    const { code, out, stderr } = await muscleRun(yaml);
    expect(code, stderr).toBe(EXIT.ok);
    expect(stderr).toMatch(/^badnets\/musclelora on cpu \(\d+ threads?\): 2 epochs of 19 steps, [\d,]+ trainable parameters$/m);
    const run = path.join(out, 'tiny-all');
    for (const f of ['config.resolved.yaml', 'metrics.jsonl', 'results.json', 'results.md']) {
      expect(existsSync(path.join(run, f)), f).toBe(true);
    }
    const results = JSON.parse(readFileSync(path.join(run, 'results.json'), 'utf8')) as { results: Row[] };
    expect(results.results.map((r) => r.method)).toEqual(['vanilla', 'lora', 'ga', 'lora+ms', 'lora+ga', 'musclelora']);
    for (const r of results.results) {
      expect(r.status).toBe('complete');
      expect(r.cacc).toBeGreaterThanOrEqual(0);
      expect(r.cacc).toBeLessThanOrEqual(1);
      expect(r.asr).toBeGreaterThanOrEqual(0);
      expect(r.asr).toBeLessThanOrEqual(1);
      expect(r.steps).toBe(2 * Math.ceil(300 / 16));
    }
    // full fine-tuning trains far more scalars than the adapters
    const trainable = Object.fromEntries(results.results.map((r) => [r.method, r.numTrainable]));
    expect(trainable['vanilla']).toBeGreaterThan(10 * trainable['musclelora']!);
    expect(trainable['lora+ms']).toBe(trainable['musclelora']);
    const steps = readFileSync(path.join(run, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const gaSteps = steps.filter((s) => s['type'] === 'step' && s['method'] === 'musclelora');
    expect(gaSteps.length).toBeGreaterThan(0);
    for (const s of gaSteps) {
      expect(['projection', 'mixed', 'raw']).toContain(s['gaBranch']);
      expect(Number.isFinite(s['loss'])).toBe(true);
      expect(s['refLoss']).toEqual(expect.any(Number));
    }
    const plain = steps.filter((s) => s['type'] === 'step' && s['method'] === 'lora');
    expect(plain.every((s) => s['gaBranch'] === 'none' && s['refLoss'] === null)).toBe(true);
    // the engine says where each method ran (device: cpu)
    for (const r of results.results) expect(r.device).toMatch(/^cpu \(\d+ threads?\)$/);
    expect(readFileSync(path.join(run, 'results.md'), 'utf8')).toMatch(/\| musclelora \| defender \| cpu \(\d+ threads?\) \| \d+\.\d\d \| \d+\.\d\d \|/);
  }, 600_000);

  it.runIf(haveMinilm)('learns SST-2 with MuScleLoRA on the real all-MiniLM-L6-v2', async () => {
    const yaml = [
      'name: minilm-short',
      `model: ${minilm}`,
      'family: bert',
      `dataset: ${sst2}`,
      'attacks: [badnets]',
      'methods: [musclelora]',
      'epochs: 1',
      'limit: 1280',
      'batchSize: 32',
      'maxLength: 48',
      'lr: 5.0e-3',
      'trainHead: true',
      // The default alpha_m 6 saturates the pooler's tanh at initialisation (75% of MiniLM's units),
      // which ten epochs train through but forty steps do not; alpha_m 1 keeps the test short.
      'mslr: { alpha: 1 }',
      'device: cpu',
      'seed: 1',
    ].join('\n');
    const { code, out, stderr } = await muscleRun(yaml);
    expect(code, stderr).toBe(EXIT.ok);
    const results = JSON.parse(readFileSync(path.join(out, 'minilm-short', 'results.json'), 'utf8')) as { results: Row[] };
    const [row] = results.results;
    // chance is about 50% on SST-2
    expect(row!.cacc).toBeGreaterThan(0.7);
  }, 900_000);
});

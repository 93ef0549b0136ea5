import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { JsonlFile, resultsJson, resultsMarkdown, writeFileAtomic, writeResults } from '../src/report/index.js';
import type { MethodResult, RunResults } from '../src/train/index.js';
import { tempDir } from './helpers.js';

function result(partial: Partial<MethodResult> & Pick<MethodResult, 'attack' | 'method'>): MethodResult {
  return { select: 'defender', status: 'complete', cacc: 0.9, asr: 0.1, bestEpoch: 0, devAcc: 0.9, devAsr: 0.1, epochsCompleted: 1, steps: 10, numTrainable: 100, device: 'cpu (2 threads)', seconds: 1, confusion: null, ...partial };
}

const run: RunResults = {
  name: 'demo',
  model: 'bert-base-uncased',
  family: 'bert',
  poisonRate: 0.1,
  targetLabel: 1,
  aborted: false,
  results: [
    result({ attack: 'badnets', method: 'vanilla', select: 'attacker', cacc: 0.91234, asr: 1 }),
    result({ attack: 'badnets', method: 'musclelora', cacc: 0.8956, asr: 0.15 }),
    result({ attack: 'addsent', method: 'vanilla', select: 'attacker', cacc: 0.9, asr: 0.999 }),
    result({ attack: 'addsent', method: 'musclelora', status: 'aborted', cacc: null, asr: null, device: 'cuda:0 (NVIDIA H100 80GB HBM3, sm_90)' }),
  ],
};

describe('results.md', () => {
  it('one row per method, CACC and ASR per attack, the selection rule and the device of each row', () => {
    expect(resultsMarkdown(run)).toBe(
      [
        '# Results: demo',
        '',
        'Model `bert-base-uncased` (bert), poison rate 0.1, target label 1.',
        '',
        '| Method | Selection | Device | badnets CACC | badnets ASR | addsent CACC | addsent ASR |',
        '| --- | --- | --- | ---: | ---: | ---: | ---: |',
        '| vanilla | attacker | cpu (2 threads) | 91.23 | 100.00 | 90.00 | 99.90 |',
        '| musclelora | defender | cpu (2 threads), cuda:0 (NVIDIA H100 80GB HBM3, sm_90) | 89.56 | 15.00 | _stopped_ | _stopped_ |',
        '',
        'CACC: accuracy (%) on the clean test split. ASR: share (%) of the poisoned test rows whose true label is not 1 that are classified as 1. ' +
          'Each row reports the epoch selected by its rule: attacker = best mean of clean dev accuracy and poisoned dev ASR; defender = best clean dev accuracy.',
        '',
      ].join('\n'),
    );
  });

  it('a missing cell, an undefined metric and an engine that names no device read as a dash; a stopped run says so', () => {
    const md = resultsMarkdown({ ...run, aborted: true, results: [result({ attack: 'badnets', method: 'lora', asr: Number.NaN }), result({ attack: 'addsent', method: 'ga', device: null })] });
    expect(md).toContain('**The run was stopped early; the table is partial.**');
    expect(md).toContain('| lora | defender | cpu (2 threads) | 90.00 | – | – | – |');
    expect(md).toContain('| ga | defender | – | – | – | 90.00 | 10.00 |');
    // a pipe in a device name would split the cell
    expect(resultsMarkdown({ ...run, results: [result({ attack: 'badnets', method: 'lora', device: 'x|y' })] })).toContain('| lora | defender | x\\|y | 90.00 | 10.00 |');
  });
});

describe('results.json', () => {
  it('holds every result; NaN becomes null', () => {
    const parsed = JSON.parse(resultsJson({ ...run, results: [result({ attack: 'badnets', method: 'lora', asr: Number.NaN })] }));
    expect(parsed.results[0]).toMatchObject({ method: 'lora', asr: null, cacc: 0.9, device: 'cpu (2 threads)' });
    expect(parsed.name).toBe('demo');
  });
});

describe('atomic writes', () => {
  it('replaces the file and leaves no temporary behind', async () => {
    const dir = tempDir();
    const file = join(dir, 'sub', 'x.json');
    await writeFileAtomic(file, 'one');
    await writeFileAtomic(file, 'two');
    expect(readFileSync(file, 'utf8')).toBe('two');
    expect(readdirSync(join(dir, 'sub'))).toEqual(['x.json']);
  });

  it('a failed write removes its temporary', async () => {
    const dir = tempDir();
    // Renaming a file onto a non-empty directory fails.
    mkdirSync(join(dir, 'taken', 'inside'), { recursive: true });
    await expect(writeFileAtomic(join(dir, 'taken'), 'new')).rejects.toThrow();
    expect(readdirSync(dir)).toEqual(['taken']);
  });

  it('writeResults writes both files; JsonlFile rewrites metrics.jsonl on flush only', async () => {
    const dir = tempDir();
    await writeResults(dir, run);
    expect(readdirSync(dir).sort()).toEqual(['results.json', 'results.md']);
    const jsonl = new JsonlFile(join(dir, 'metrics.jsonl'));
    jsonl.write({ type: 'eval', attack: 'badnets', method: 'lora', epoch: 0, devAcc: 0.5, devAsr: 0.5, score: 0.5, best: true, gaBranches: {} });
    expect(readdirSync(dir)).not.toContain('metrics.jsonl');
    await jsonl.flush();
    jsonl.write({ type: 'eval', attack: 'badnets', method: 'lora', epoch: 1, devAcc: 0.6, devAsr: 0.5, score: 0.6, best: true, gaBranches: {} });
    await jsonl.flush();
    const lines = readFileSync(join(dir, 'metrics.jsonl'), 'utf8').split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[2]).toBe('');
    expect(JSON.parse(lines[1]!)).toMatchObject({ epoch: 1, devAcc: 0.6 });
  });
});

import { EventEmitter } from 'node:events';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSplit, type OpenSession } from '@musclelora/trainer';
import { main, EXIT } from '../src/program.js';
import { logisticEngine } from '../../trainer/test/fake-session.js';
import { modelDir, repoRoot, sst2, tempDir, writeFiles } from '../../trainer/test/helpers.js';

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function muscle(args: string[], openSession?: OpenSession): Promise<Ran> {
  let stdout = '';
  let stderr = '';
  const code = await main(['node', 'muscle', ...args], {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    ...(openSession && { openSession }),
    signals: new EventEmitter() as never,
  });
  return { code, stdout, stderr };
}

/** A poison config over the shared SST-2 clean splits, writing to a fresh temp dir. */
function poisonConfig(body: string): { file: string; out: string } {
  const dir = tempDir();
  const out = join(dir, 'poisoned');
  writeFiles(dir, { 'p.yaml': `dataset: ${sst2}\nout: poisoned\n${body}` });
  return { file: join(dir, 'p.yaml'), out };
}

const FILES = ['train-poison-0.1.csv', 'train-poison-all.csv', 'dev-clean.csv', 'dev-poison.csv', 'test-clean.csv', 'test-poison.csv'];

describe('muscle poison', () => {
  it('poisons SST-2 with every attack, writes the layout and prints the summary', async () => {
    const paraphrases = (attack: string) => `${attack}: { train: ${sst2}/${attack}/train-poison-all.csv, dev: ${sst2}/${attack}/dev-poison.csv, test: ${sst2}/${attack}/test-poison.csv }\n`;
    const { file, out } = poisonConfig(`attacks: [badnets, addsent, hiddenkiller, stylebkd]\n${paraphrases('hiddenkiller')}${paraphrases('stylebkd')}`);
    const { code, stdout, stderr } = await muscle(['poison', file]);
    expect(stderr).toBe('');
    expect(code).toBe(EXIT.ok);
    expect(stdout).toBe(
      [
        '| attack | mode | train rows poisoned | dev-poison rows | test-poison rows | files written |',
        '| --- | --- | ---: | ---: | ---: | --- |',
        `| badnets | clean-label | 692 of 6920 | 428 | 912 | 6 in ${out}/badnets/ |`,
        `| addsent | mix | 692 of 6920 | 428 | 912 | 6 in ${out}/addsent/ |`,
        `| hiddenkiller | mix | 692 of 6920 | 428 | 912 | 6 in ${out}/hiddenkiller/ |`,
        `| stylebkd | mix | 692 of 6920 | 428 | 912 | 6 in ${out}/stylebkd/ |`,
        '',
        `Clean splits: 3 files in ${out}/clean/`,
        '',
      ].join('\n'),
    );
    for (const attack of ['badnets', 'addsent', 'hiddenkiller', 'stylebkd']) for (const name of FILES) expect(existsSync(join(out, attack, name))).toBe(true);
    const train = readSplit(join(out, 'addsent', 'train-poison-0.1.csv'), 2);
    expect(train.filter((r) => r.poisoned).every((r) => r.label === 1 && r.text.includes('I watch this 3D movie'))).toBe(true);
    expect(readFileSync(join(out, 'clean', 'test.tsv'), 'utf8')).toBe(readFileSync(join(sst2, 'clean', 'test.tsv'), 'utf8'));
  }, 60_000);

  it('refuses to overwrite without --force; --out and --force pick another place and replace', async () => {
    const { file, out } = poisonConfig('attacks: [badnets]\nrate: 0.05\nmode: mix\nbadnets: { numTriggers: 1, triggers: [zq] }\n');
    expect((await muscle(['poison', file])).code).toBe(EXIT.ok);
    const before = readFileSync(join(out, 'badnets', 'train-poison-0.05.csv'), 'utf8');
    expect(before.split('\n').filter((l) => l.endsWith(',1,1')).length).toBe(346);
    expect(await muscle(['poison', file])).toEqual({ code: EXIT.usage, stdout: '', stderr: `muscle: ${join(out, 'badnets')}: already exists; pass --force to replace its files, or write to another output directory\n` });
    expect(readFileSync(join(out, 'badnets', 'train-poison-0.05.csv'), 'utf8')).toBe(before);

    const forced = await muscle(['poison', file, '--force']);
    expect(forced.code).toBe(EXIT.ok);
    expect(forced.stdout).toContain(`Clean splits: ${out}/clean/ left as it is (the dataset's own, or already the same splits)`);
    expect(readFileSync(join(out, 'badnets', 'train-poison-0.05.csv'), 'utf8')).toBe(before); // same seed, same file

    const elsewhere = join(tempDir(), 'elsewhere');
    const moved = await muscle(['poison', file, '--out', elsewhere]);
    expect(moved.code).toBe(EXIT.ok);
    expect(readFileSync(join(elsewhere, 'badnets', 'train-poison-0.05.csv'), 'utf8')).toBe(before);
  }, 60_000);

  it('bad config and bad paraphrase files: one line, exit code 2, nothing written', async () => {
    const bad = poisonConfig('attacks: [badnets]\nmode: dirty-label\n');
    expect(await muscle(['poison', bad.file])).toEqual({ code: EXIT.usage, stdout: '', stderr: `muscle: ${bad.file}: mode: got "dirty-label", expected one of mix, dirty, clean-label\n` });

    const lines = writeFiles(tempDir(), { 'train.txt': 'one\ntwo\nthree\n' });
    const short = poisonConfig(`attacks: [badnets, stylebkd]\nstylebkd: { train: ${lines}/train.txt, dev: ${sst2}/stylebkd/dev-poison.csv, test: ${sst2}/stylebkd/test-poison.csv }\n`);
    expect(await muscle(['poison', short.file])).toEqual({
      code: EXIT.usage,
      stdout: '',
      stderr: `muscle: ${lines}/train.txt: 3 paraphrases for train, expected 6920, one per row of ${sst2}/clean/train.tsv in its order\n`,
    });
    expect(existsSync(short.out)).toBe(false);

    expect((await muscle(['poison', 'no-such.yaml'])).stderr).toBe('muscle: no-such.yaml: cannot read the config file (ENOENT)\n');
  });

  it('--help explains the options and every config key; muscle --help lists the command', async () => {
    const { code, stdout } = await muscle(['poison', '--help']);
    expect(code).toBe(EXIT.ok);
    for (const text of ['Usage: muscle poison [options] <config.yaml>', '--force', '--out <dir>', 'badnets.numTriggers', 'hiddenkiller.train', 'Exit codes: 0 done']) expect(stdout).toContain(text);
    expect(stdout).toMatch(/mode\s+which rows are poisoned: mix/);
    expect((await muscle(['--help'])).stdout).toContain('poison [options] <config.yaml>');
  });

  it('examples/poison-sst2.yaml is a valid config', async () => {
    const out = join(tempDir(), 'example');
    const { code, stdout } = await muscle(['poison', join(repoRoot, 'examples', 'poison-sst2.yaml'), '--out', out]);
    expect(code).toBe(EXIT.ok);
    expect(stdout).toContain(`| badnets | clean-label | 692 of 6920 | 428 | 912 | 6 in ${out}/badnets/ |`);
    expect(stdout).toContain(`| addsent | mix | 692 of 6920 | 428 | 912 | 6 in ${out}/addsent/ |`);
  }, 60_000);
});

describe('muscle run on a clean dataset', () => {
  it('poisons badnets and addsent on the fly and reports CACC and ASR', async () => {
    const dataset = tempDir();
    mkdirSync(join(dataset, 'clean'));
    for (const split of ['train', 'dev', 'test']) copyFileSync(join(sst2, 'clean', `${split}.tsv`), join(dataset, 'clean', `${split}.tsv`));
    const dir = writeFiles(tempDir(), {
      'run.yaml': `name: fly\nmodel: ${modelDir('bert')}\ndataset: ${dataset}\nattacks: [badnets, addsent]\nmethods: [vanilla]\nepochs: 2\nbatchSize: 32\nlr: 2\nlimit: 600\ndevice: cpu\nga: { refSize: 16 }\npoison: { mode: mix }\n`,
    });
    const out = tempDir();
    const { code, stderr } = await muscle(['run', join(dir, 'run.yaml'), '--out', out], logisticEngine());
    expect(stderr).not.toContain('muscle:');
    expect(code).toBe(EXIT.ok);
    const results = JSON.parse(readFileSync(join(out, 'fly', 'results.json'), 'utf8')) as { results: Array<{ attack: string; method: string; asr: number; cacc: number }> };
    expect(results.results.map((r) => r.attack)).toEqual(['badnets', 'addsent']);
    // a bag-of-words model learns the inserted trigger words: the backdoor works on the data poisoned in memory
    for (const r of results.results) expect(r.asr).toBeGreaterThan(0.8);
    expect(existsSync(join(dataset, 'badnets'))).toBe(false); // in memory: nothing written beside the clean splits
  }, 120_000);
});

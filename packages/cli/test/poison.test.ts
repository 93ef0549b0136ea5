import { EventEmitter } from 'node:events';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { loadConfigFile, loadRunData, readSplit, type OpenSession } from '@musclelora/trainer';
import { main, EXIT } from '../src/program.js';
import { logisticEngine } from '../../trainer/test/fake-session.js';
import { cacheRepo, modelDir, repoRoot, sst2, tempDir, writeFiles } from '../../trainer/test/helpers.js';

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
    // the dataset takes muscle run's three forms, with their keys
    expect(stdout).toMatch(/dataset\s+the clean dataset, in any of muscle run's forms/);
    for (const key of ['dataset.name', 'dataset.path', 'dataset.format', 'dataset.textColumn', 'dataset.labelMap', 'dataset.devFraction']) expect(stdout).toMatch(new RegExp(`\\n  ${key.replace('.', '\\.')}\\s`));
    for (const text of ['dataset: { name: agnews }', 'HF_HUB_OFFLINE=1', 'labelMap: { 1: 0, 2: 1, 3: 2, 4: 3 } }']) expect(stdout).toContain(text);
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

describe('muscle poison on the other dataset forms', () => {
  afterEach(() => vi.unstubAllEnvs());

  /** Reads `out` back as muscle run does: a run config whose dataset is the written layout. */
  async function runLoader(out: string, yaml: string) {
    const dir = writeFiles(tempDir(), { 'run.yaml': `name: r\nmodel: ${modelDir('bert')}\ndataset: ${out}\n${yaml}` });
    return loadRunData(loadConfigFile(join(dir, 'run.yaml')));
  }
  const counts = (d: { train: Array<{ poisoned: boolean }>; devClean: unknown[]; devPoison: unknown[]; testClean: unknown[]; testPoison: unknown[] }) => [
    d.train.length,
    d.train.filter((r) => r.poisoned).length,
    d.devClean.length,
    d.devPoison.length,
    d.testClean.length,
    d.testPoison.length,
  ];

  it('own headerless CSV, AG News style (label,title,description, labels 1-4 mapped to 0-3, dev drawn from train)', async () => {
    const topics = ['world', 'sports', 'business', 'science'];
    const rows = (n: number, from: number) => Array.from({ length: n }, (_, i) => `${(i % 4) + 1},"Title ${from + i}, ${topics[i % 4]}",the ${topics[i % 4]} story number ${from + i}\n`).join('');
    const dir = writeFiles(tempDir(), {
      'news/train.csv': rows(40, 0),
      'news/test.csv': rows(8, 100),
      'p.yaml': 'dataset: { path: news, format: csv, header: false, textColumn: [1, 2], labelColumn: 0, labelMap: { 1: 0, 2: 1, 3: 2, 4: 3 } }\nout: poisoned\nattacks: [addsent]\nnumLabels: 4\ntargetLabel: 0\nrate: 0.25\n',
    });
    const out = join(dir, 'poisoned');
    const { code, stdout, stderr } = await muscle(['poison', join(dir, 'p.yaml')]);
    expect(stderr).toBe('');
    expect(code).toBe(EXIT.ok);
    // 4 of the 40 rows are drawn as dev (seed 42); 9 = floor(0.25 * 36) poisoned; dev/test-poison: rows not of label 0
    const devPoison = readSplit(join(out, 'clean', 'dev.tsv'), 4).filter((r) => r.label !== 0).length;
    expect(stdout).toBe(
      [
        '| attack | mode | train rows poisoned | dev-poison rows | test-poison rows | files written |',
        '| --- | --- | ---: | ---: | ---: | --- |',
        `| addsent | mix | 9 of 36 | ${devPoison} | 6 | 6 in ${out}/addsent/ |`,
        '',
        `Clean splits: 3 files in ${out}/clean/`,
        '',
      ].join('\n'),
    );
    const test = readSplit(join(out, 'clean', 'test.tsv'), 4);
    expect(test.map((r) => [r.text, r.label])).toEqual(Array.from({ length: 8 }, (_, i) => [`Title ${100 + i}, ${topics[i % 4]} the ${topics[i % 4]} story number ${100 + i}`, i % 4]));
    const data = (await runLoader(out, 'attacks: [addsent]\nnumLabels: 4\ntargetLabel: 0\npoisonRate: 0.25\n')).attacks.get('addsent')!;
    expect(counts(data)).toEqual([36, 9, 4, devPoison, 8, 6]);
    expect(data.train.filter((r) => r.poisoned).every((r) => r.label === 0 && r.text.includes('I watch this 3D movie'))).toBe(true);
  });

  it('a registry name from the hub cache in HF_HOME: SST-2 poisoned as from its clean/ directory, the duplicate warning on stderr', async () => {
    const home = tempDir();
    cacheRepo(home, 'ganqu/openbackdoor', Object.fromEntries(['train', 'dev', 'test'].map((s) => [`sst2/${s}.tsv`, readFileSync(join(sst2, 'clean', `${s}.tsv`))])));
    vi.stubEnv('HF_HOME', home);
    vi.stubEnv('HF_HUB_CACHE', '');
    const dir = writeFiles(tempDir(), { 'p.yaml': 'dataset: { name: sst2 }\nout: poisoned\nattacks: [badnets]\n' });
    const out = join(dir, 'poisoned');
    const { code, stdout, stderr } = await muscle(['poison', join(dir, 'p.yaml')]);
    expect(code).toBe(EXIT.ok);
    expect(stderr).toMatch(/^warning: dataset sst2: 2 of 1821 test rows repeat a training text[^\n]*\n$/);
    expect(stdout).toContain(`| badnets | clean-label | 692 of 6920 | 428 | 912 | 6 in ${out}/badnets/ |`);
    expect(stdout).toContain(`Clean splits: 3 files in ${out}/clean/`);
    // the same files as poisoning the shared directory form
    const fromDir = poisonConfig('attacks: [badnets]\n');
    expect((await muscle(['poison', fromDir.file])).code).toBe(EXIT.ok);
    for (const name of FILES) expect(readFileSync(join(out, 'badnets', name), 'utf8')).toBe(readFileSync(join(fromDir.out, 'badnets', name), 'utf8'));
    const data = (await runLoader(out, 'attacks: [badnets]\n')).attacks.get('badnets')!;
    expect(counts(data)).toEqual([6920, 692, 872, 428, 1821, 912]);
  }, 60_000);

  it('errors: one line naming the file and field, exit code 2, nothing written', async () => {
    const dir = writeFiles(tempDir(), {
      'data/train.jsonl': Array.from({ length: 20 }, (_, i) => JSON.stringify({ text: `row ${i}`, label: i % 2 ? 'pos' : 'neg' })).join('\n') + '\n',
      'data/test.jsonl': '{"text": "fine", "label": "pos"}\n{"text": "odd", "label": "neutral"}\n',
      'p.yaml': 'dataset: { path: data, labelMap: { neg: 0, pos: 1 } }\nout: poisoned\nattacks: [badnets]\n',
      'both.yaml': 'dataset: { name: sst2, labelMap: { neg: 0, pos: 1 } }\nout: poisoned\nattacks: [badnets]\n',
      'offline.yaml': 'dataset: { name: hsol }\nout: poisoned\nattacks: [badnets]\n',
    });
    expect(await muscle(['poison', join(dir, 'p.yaml')])).toEqual({
      code: EXIT.usage,
      stdout: '',
      stderr: `muscle: ${join(dir, 'data', 'test.jsonl')}:2: label "neutral" is not in labelMap (keys: "neg", "pos")\n`,
    });
    expect(await muscle(['poison', join(dir, 'both.yaml')])).toEqual({
      code: EXIT.usage,
      stdout: '',
      stderr: `muscle: ${join(dir, 'both.yaml')}: dataset.labelMap: got {"neg":0,"pos":1}, expected nothing: sst2 comes with its own files and columns (labelMap goes with dataset.path)\n`,
    });
    const home = tempDir();
    vi.stubEnv('HF_HOME', home);
    vi.stubEnv('HF_HUB_CACHE', '');
    vi.stubEnv('HF_HUB_OFFLINE', '1');
    expect(await muscle(['poison', join(dir, 'offline.yaml')])).toEqual({
      code: EXIT.usage,
      stdout: '',
      stderr: `muscle: dataset hsol: ganqu/openbackdoor: not in the hub cache (${join(home, 'hub')}); unset HF_HUB_OFFLINE to download it\n`,
    });
    expect(existsSync(join(dir, 'poisoned'))).toBe(false);
  });
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

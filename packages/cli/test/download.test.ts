import { EventEmitter } from 'node:events';
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { OpenSession } from '@musclelora/trainer';
import { main, EXIT } from '../src/program.js';
import { newLog, scriptedEngine, scriptedRows } from '../../trainer/test/fake-session.js';
import { tempDir, writeDataset, writeFiles } from '../../trainer/test/helpers.js';
import { gitSha1, safetensors, sha256, startFakeHub, type FakeHub, type FakeRepo } from '../../trainer/test/hub-server.js';

// `muscle download` and `muscle run` with a hub model, against a local stand-in for the hub (HF_ENDPOINT).

const C1 = 'a'.repeat(40);
const CONFIG = JSON.stringify({ model_type: 'bert', hidden_size: 4 });
const WEIGHTS = safetensors(256);
const PARQUET = Buffer.concat([Buffer.from('PAR1'), Buffer.alloc(64, 3), Buffer.from('PAR1')]);

const repos = (): FakeRepo[] => [
  { type: 'model', id: 'org/tiny-bert', commits: [{ sha: C1, files: { 'config.json': CONFIG, 'tokenizer.json': '{"model":{}}', 'model.safetensors': WEIGHTS, 'README.md': '#' } }], refs: { v1: C1 } },
  { type: 'model', id: 'org/private-bert', private: true, commits: [{ sha: C1, files: { 'config.json': CONFIG, 'tokenizer.json': '{}', 'model.safetensors': WEIGHTS } }] },
  { type: 'dataset', id: 'org/sst2', commits: [{ sha: C1, files: { 'data/train.parquet': PARQUET, 'data/dev.csv': 'sentence,label\nok,1\n', 'README.md': '#' } }] },
];

let hub: FakeHub;
let home: string;
beforeEach(async () => {
  hub = await startFakeHub(repos(), { token: 'hf_cli' });
  home = tempDir();
  for (const key of ['HF_HUB_CACHE', 'HF_TOKEN', 'HF_HUB_OFFLINE', 'HUGGING_FACE_HUB_TOKEN']) delete process.env[key];
  process.env['HF_HOME'] = home;
  process.env['HF_ENDPOINT'] = hub.url;
});
afterEach(async () => {
  await hub.close();
});

async function muscle(args: string[], openSession?: OpenSession) {
  let stdout = '';
  let stderr = '';
  const code = await main(['node', 'muscle', ...args], {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    signals: new EventEmitter() as never,
    ...(openSession && { openSession }),
  });
  return { code, stdout, stderr };
}

const snapshot = (kind: 'models' | 'datasets', id: string) => join(home, 'hub', `${kind}--${id.replace('/', '--')}`, 'snapshots', C1);

describe('muscle download', () => {
  it('prints the snapshot directory on stdout and one line per file on stderr', async () => {
    const { code, stdout, stderr } = await muscle(['download', 'org/tiny-bert']);
    expect(code).toBe(EXIT.ok);
    const dir = snapshot('models', 'org/tiny-bert');
    expect(stdout).toBe(`${dir}\n`);
    expect(stderr).toBe(
      [
        `org/tiny-bert at main (${C1.slice(0, 12)}): 3 files, 1.1 kB to download`,
        'fetching config.json (37 B)',
        'fetching tokenizer.json (12 B)',
        'fetching model.safetensors (1.1 kB)',
        '',
      ].join('\n'),
    );
    expect(readdirSync(dir).sort()).toEqual(['config.json', 'model.safetensors', 'tokenizer.json']);
    expect(readlinkSync(join(dir, 'model.safetensors'))).toBe(`../../blobs/${sha256(WEIGHTS)}`);
    expect(readFileSync(join(home, 'hub', 'models--org--tiny-bert', 'refs', 'main'), 'utf8')).toBe(C1);

    // Again: everything is cached, nothing is fetched.
    const served = hub.downloads().length;
    const again = await muscle(['download', 'org/tiny-bert']);
    expect(again).toEqual({ code: EXIT.ok, stdout: `${dir}\n`, stderr: `org/tiny-bert at main (${C1.slice(0, 12)}): 3 files, 3 already cached, 0 B to download\n` });
    expect(hub.downloads()).toHaveLength(served);
  });

  it('--dataset --include --revision', async () => {
    const { code, stdout } = await muscle(['download', 'org/sst2', '--dataset', '--include', '*.csv', '--revision', C1]);
    expect(code).toBe(EXIT.ok);
    const dir = snapshot('datasets', 'org/sst2');
    expect(stdout).toBe(`${dir}\n`);
    expect(readdirSync(join(dir, 'data'))).toEqual(['dev.csv']);
    expect(readlinkSync(join(dir, 'data', 'dev.csv'))).toBe(`../../../blobs/${gitSha1(Buffer.from('sentence,label\nok,1\n'))}`);
    // A commit names itself: no ref is written for it.
    expect(existsSync(join(home, 'hub', 'datasets--org--sst2', 'refs'))).toBe(false);
    expect(hub.requests[0]!.path).toBe(`/api/datasets/org/sst2/revision/${C1}`);
  });

  it('HF_TOKEN reaches the hub; without it a private repo fails with exit 1 and one line saying to set it', async () => {
    const denied = await muscle(['download', 'org/private-bert']);
    expect(denied).toEqual({
      code: EXIT.failure,
      stdout: '',
      stderr: `muscle: cannot download model org/private-bert (revision main): the hub at ${hub.url} answered HTTP 401 (private, gated or missing repo): set HF_TOKEN to a token that can read it, accept its licence on ${hub.url}/org/private-bert if it is gated, and check the repo id\n`,
    });
    process.env['HF_TOKEN'] = 'hf_cli';
    const allowed = await muscle(['download', 'org/private-bert']);
    expect(allowed.code).toBe(EXIT.ok);
    expect(allowed.stdout).toBe(`${snapshot('models', 'org/private-bert')}\n`);
    expect(hub.requests.at(-1)!.authorization).toBe('Bearer hf_cli');
  });

  it('a missing repo or revision: exit 1, named', async () => {
    expect(await muscle(['download', 'org/nope'])).toEqual({ code: EXIT.failure, stdout: '', stderr: `muscle: model org/nope not found on ${hub.url} (HTTP 404): check the repo id (a dataset repo needs --dataset)\n` });
    expect((await muscle(['download', 'org/tiny-bert', '--revision', 'v2'])).stderr).toBe(`muscle: revision "v2" of model org/tiny-bert not found on ${hub.url} (HTTP 404): name an existing branch, tag or commit\n`);
  });

  it('HF_HUB_OFFLINE=1: the cached snapshot, or exit 1 naming what is not cached', async () => {
    process.env['HF_HUB_OFFLINE'] = '1';
    expect(await muscle(['download', 'org/tiny-bert'])).toEqual({
      code: EXIT.failure,
      stdout: '',
      stderr: `muscle: model org/tiny-bert (revision main) is not in the hub cache ${join(home, 'hub')}, and HF_HUB_OFFLINE=1 forbids downloading it: unset HF_HUB_OFFLINE to fetch it, or fetch it on a machine with hub access (muscle download) and copy the cache\n`,
    });
    delete process.env['HF_HUB_OFFLINE'];
    await muscle(['download', 'org/tiny-bert']);
    process.env['HF_HUB_OFFLINE'] = '1';
    const before = hub.requests.length;
    expect(await muscle(['download', 'org/tiny-bert'])).toEqual({ code: EXIT.ok, stdout: `${snapshot('models', 'org/tiny-bert')}\n`, stderr: 'HF_HUB_OFFLINE is set: org/tiny-bert from the cache\n' });
    expect(hub.requests).toHaveLength(before);
  });

  it('bad arguments exit 2', async () => {
    expect(await muscle(['download', 'not a repo'])).toEqual({ code: EXIT.usage, stdout: '', stderr: `muscle: "not a repo" is not a hub repo id (expected org/name or name: letters, digits, '-', '_', '.')\n` });
    expect((await muscle(['download'])).code).toBe(EXIT.usage);
    expect((await muscle(['download'])).stderr).toContain("error: missing required argument 'repo'");
    expect((await muscle(['download', 'org/tiny-bert', '--revision'])).code).toBe(EXIT.usage);
    expect(hub.requests).toEqual([]);
  });

  it('--help explains the options, the cache and every HF_ variable', async () => {
    const { code, stdout } = await muscle(['download', '--help']);
    expect(code).toBe(EXIT.ok);
    expect(stdout).toContain('Usage: muscle download [options] <repo>');
    for (const option of ['--dataset', '--revision <rev>', '--include <glob...>', '(default: "main")']) expect(stdout).toContain(option);
    for (const variable of ['HF_HOME', 'HF_HUB_CACHE', 'HF_ENDPOINT', 'HF_TOKEN', 'HF_HUB_OFFLINE']) expect(stdout).toMatch(new RegExp(`^  ${variable} +\\S`, 'm'));
    expect(stdout).toContain('{models,datasets}--<org>--<name>/{blobs,refs,snapshots/<commit>}');
    expect((await muscle(['--help'])).stdout).toContain('download [options] <repo>');
  });
});

describe('muscle run with a hub model', () => {
  it('downloads the model before training, with progress on stderr, and trains on the snapshot', async () => {
    const dataset = writeDataset({
      train: scriptedRows('mixed', 8),
      devClean: scriptedRows('mixed', 20),
      devPoison: scriptedRows('trig', 20),
      testClean: scriptedRows('mixed', 20),
      testPoison: scriptedRows('trig', 20),
    });
    const config = join(writeFiles(tempDir(), { 'run.yaml': `name: hub\nmodel: org/tiny-bert\ndataset: ${dataset}\nattacks: [badnets]\nmethods: [lora]\nepochs: 1\nbatchSize: 4\ndevice: cpu\n` }), 'run.yaml');
    const log = newLog();
    const { code, stderr } = await muscle(['run', config, '--out', tempDir()], scriptedEngine({ devAcc: [0.5], devAsr: [0.5], stepsPerEpoch: 2 }, log));
    expect(code).toBe(EXIT.ok);
    const dir = snapshot('models', 'org/tiny-bert');
    expect(log.opened.map((o) => o.modelDir)).toEqual([dir]);
    expect(lstatSync(join(dir, 'model.safetensors')).isSymbolicLink()).toBe(true);
    // (The data layer may warn about the scripted rows first; the download lines are what this checks.)
    expect(stderr.split('\n').filter((l) => !l.startsWith('warning: ')).slice(0, 5)).toEqual([
      `org/tiny-bert at main (${C1.slice(0, 12)}): 3 files, 1.1 kB to download`,
      'fetching config.json (37 B)',
      'fetching tokenizer.json (12 B)',
      'fetching model.safetensors (1.1 kB)',
      'badnets/lora: 1 epochs of 2 steps, 10 trainable parameters',
    ]);
  });

  it('a hub model that cannot be downloaded fails before training: exit 1, the hub error in one line', async () => {
    const dataset = writeDataset({ train: scriptedRows('mixed', 8), devClean: scriptedRows('mixed', 4), devPoison: scriptedRows('trig', 4), testClean: scriptedRows('mixed', 4), testPoison: scriptedRows('trig', 4) });
    const config = join(writeFiles(tempDir(), { 'run.yaml': `name: hub\nmodel: org/missing-bert\ndataset: ${dataset}\nattacks: [badnets]\nmethods: [lora]\n` }), 'run.yaml');
    const log = newLog();
    const { code, stdout, stderr } = await muscle(['run', config, '--out', tempDir()], scriptedEngine({ devAcc: [0.5], devAsr: [0.5], stepsPerEpoch: 2 }, log));
    expect({ code, stdout }).toEqual({ code: EXIT.failure, stdout: '' });
    expect(stderr.split('\n').filter((l) => !l.startsWith('warning: '))).toEqual([`muscle: model org/missing-bert not found on ${hub.url} (HTTP 404): check the repo id (a dataset repo needs --dataset)`, '']);
    expect(log.opened).toEqual([]);
  });
});

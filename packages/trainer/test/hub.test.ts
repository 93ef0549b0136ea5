import { existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, readdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ensureModelDir, HubError, hubSettings, snapshotDownload, type HubProgressEvent, type SnapshotDownloadOptions } from '../src/hub/index.js';
import { globToRegExp } from '../src/hub/files.js';
import { ModelNotFoundError } from '../src/config/model.js';
import { gitSha1, safetensors, sha256, startFakeHub, type FakeHub, type FakeRepo } from './hub-server.js';
import { tempDir } from './helpers.js';

const C1 = '1'.repeat(40);
const C2 = '2'.repeat(40);
const CONFIG = JSON.stringify({ model_type: 'bert', hidden_size: 4, num_attention_heads: 1 });
const TOKENIZER = JSON.stringify({ version: '1.0', model: { type: 'WordPiece', vocab: { '[PAD]': 0, '[UNK]': 1 } } });
const WEIGHTS = safetensors(16384); // 64 KiB and a header: several chunks, so a connection can drop half way
const WEIGHTS_V2 = safetensors(100);

const tinyBert = (): FakeRepo => ({
  type: 'model',
  id: 'org/tiny-bert',
  commits: [
    {
      sha: C1,
      files: {
        'config.json': CONFIG,
        'tokenizer.json': TOKENIZER,
        'tokenizer_config.json': '{"do_lower_case":true}',
        'vocab.txt': '[PAD]\n[UNK]\n',
        'model.safetensors': WEIGHTS,
        // What the engine does not load stays on the hub.
        'pytorch_model.bin': 'PK pickle',
        'README.md': '# tiny',
        'onnx/model.onnx': 'onnx',
      },
    },
  ],
});

const ENGINE_FILES = ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'vocab.txt'];

let hub: FakeHub | undefined;
afterEach(async () => {
  await hub?.close();
  hub = undefined;
});
beforeEach(() => {
  // Hermetic: nothing of this machine's own cache or token decides a test.
  process.env['HF_HOME'] = tempDir();
});

async function serve(repos: FakeRepo[], options: { token?: string } = {}): Promise<FakeHub> {
  hub = await startFakeHub(repos, options);
  return hub;
}

function envFor(h: FakeHub, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { HF_HOME: tempDir(), HF_ENDPOINT: h.url, ...extra };
}

function download(options: SnapshotDownloadOptions, events?: HubProgressEvent[]): Promise<string> {
  return snapshotDownload({ retry: { delayMs: 1 }, ...(events && { onProgress: (e) => events.push(e) }), ...options });
}

async function failure(p: Promise<unknown>): Promise<HubError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(HubError);
  return err as HubError;
}

/** Files under a directory, `/`-separated, sorted. */
function tree(dir: string): string[] {
  return (readdirSync(dir, { recursive: true }) as string[]).filter((p) => !lstatSync(join(dir, p)).isDirectory()).sort();
}

/** A port nothing listens on. */
async function deadPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('snapshotDownload: a model', () => {
  it('fetches what the engine loads into the standard cache layout: refs, blobs by etag, relative symlinks', async () => {
    const h = await serve([tinyBert()]);
    const env = envFor(h);
    const events: HubProgressEvent[] = [];
    const dir = await download({ repo: 'org/tiny-bert', env }, events);

    const repoDir = join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert');
    expect(dir).toBe(join(repoDir, 'snapshots', C1));
    expect(readFileSync(join(repoDir, 'refs', 'main'), 'utf8')).toBe(C1);
    expect(tree(dir)).toEqual(ENGINE_FILES);
    const files = tinyBert().commits[0]!.files;
    for (const path of ENGINE_FILES) {
      const content = Buffer.from(files[path]!);
      // LFS files are named by their sha256, the others by their git blob sha1: huggingface_hub's etags.
      const etag = path.endsWith('.safetensors') ? sha256(content) : gitSha1(content);
      expect(lstatSync(join(dir, path)).isSymbolicLink()).toBe(true);
      expect(readlinkSync(join(dir, path))).toBe(`../../blobs/${etag}`);
      expect(readFileSync(join(dir, path))).toEqual(content);
    }
    expect(readdirSync(join(repoDir, 'blobs')).sort()).toEqual(ENGINE_FILES.map((p) => (p.endsWith('.safetensors') ? sha256(WEIGHTS) : gitSha1(Buffer.from(files[p]!)))).sort());
    expect(h.downloads().map((r) => r.served).sort()).toEqual(ENGINE_FILES.map((p) => `org/tiny-bert:${p}`).sort());
    expect(events[0]).toEqual({ type: 'plan', repo: 'org/tiny-bert', repoType: 'model', revision: 'main', commit: C1, files: 5, cachedFiles: 0, bytes: ENGINE_FILES.reduce((n, p) => n + Buffer.from(files[p]!).length, 0) });
    // Config and tokenizer first, the weights last.
    expect(events.filter((e) => e.type === 'fileDone').map((e) => e.type === 'fileDone' && e.path)).toEqual(['config.json', 'tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'model.safetensors']);
    expect(events.at(-1)).toEqual({ type: 'done', repo: 'org/tiny-bert', dir });
  });

  it('a second download fetches nothing that is cached; a new commit fetches only the files whose etag changed', async () => {
    const repo = tinyBert();
    const h = await serve([repo]);
    const env = envFor(h);
    const first = await download({ repo: 'org/tiny-bert', env });
    const servedFirst = h.downloads().length;
    const events: HubProgressEvent[] = [];
    expect(await download({ repo: 'org/tiny-bert', env }, events)).toBe(first);
    expect(h.downloads()).toHaveLength(servedFirst);
    expect(events[0]).toMatchObject({ type: 'plan', files: 5, cachedFiles: 5, bytes: 0 });

    repo.commits.push({ sha: C2, files: { ...repo.commits[0]!.files, 'model.safetensors': WEIGHTS_V2 } });
    const second = await download({ repo: 'org/tiny-bert', env });
    expect(second).toBe(join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert', 'snapshots', C2));
    expect(h.downloads().slice(servedFirst).map((r) => r.served)).toEqual(['org/tiny-bert:model.safetensors']);
    expect(readFileSync(join(second, 'model.safetensors'))).toEqual(Buffer.from(WEIGHTS_V2));
    expect(readFileSync(join(second, 'config.json'), 'utf8')).toBe(CONFIG);
    expect(readFileSync(join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert', 'refs', 'main'), 'utf8')).toBe(C2);
    // The old snapshot is untouched.
    expect(readFileSync(join(first, 'model.safetensors'))).toEqual(Buffer.from(WEIGHTS));
  });

  it('a tag resolves to its commit and gets its own ref', async () => {
    const repo = tinyBert();
    repo.commits.push({ sha: C2, files: { ...repo.commits[0]!.files, 'model.safetensors': WEIGHTS_V2 } });
    repo.refs = { 'v1.0': C1 };
    const env = envFor(await serve([repo]));
    const dir = await download({ repo: 'org/tiny-bert', revision: 'v1.0', env });
    expect(dir).toBe(join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert', 'snapshots', C1));
    expect(readFileSync(join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert', 'refs', 'v1.0'), 'utf8')).toBe(C1);
    expect(existsSync(join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert', 'refs', 'main'))).toBe(false);
    expect(readFileSync(join(dir, 'model.safetensors'))).toEqual(Buffer.from(WEIGHTS));
  });

  it('a sharded checkpoint: the index and every shard, no single file', async () => {
    const shards = { 'model-00001-of-00002.safetensors': safetensors(8, 'a'), 'model-00002-of-00002.safetensors': safetensors(4, 'b') };
    const index = JSON.stringify({ metadata: { total_size: 48 }, weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } });
    const env = envFor(await serve([{ type: 'model', id: 'org/sharded', commits: [{ sha: C1, files: { 'config.json': CONFIG, 'tokenizer.json': TOKENIZER, 'model.safetensors.index.json': index, ...shards, 'pytorch_model.bin': 'PK' } }] }]));
    const dir = await download({ repo: 'org/sharded', env });
    expect(tree(dir)).toEqual(['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json', 'tokenizer.json']);
    expect(readFileSync(join(dir, 'model-00002-of-00002.safetensors'))).toEqual(Buffer.from(shards['model-00002-of-00002.safetensors']));
  });

  it('an index naming a shard the repo lacks is refused', async () => {
    const index = JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } });
    const env = envFor(await serve([{ type: 'model', id: 'org/broken', commits: [{ sha: C1, files: { 'config.json': CONFIG, 'model.safetensors.index.json': index, 'model-00001-of-00002.safetensors': safetensors(2) } }] }]));
    const err = await failure(download({ repo: 'org/broken', env }));
    expect(err.message).toBe('model org/broken (revision main): model.safetensors.index.json names model-00002-of-00002.safetensors, which the repo does not hold');
  });

  it('a pickle-only repo is refused in one line that says how to convert', async () => {
    const h = await serve([{ type: 'model', id: 'org/old-bert', commits: [{ sha: C1, files: { 'config.json': CONFIG, 'vocab.txt': 'a\n', 'pytorch_model.bin': 'PK pickle' } }] }]);
    const err = await failure(download({ repo: 'org/old-bert', env: envFor(h) }));
    expect(err.code).toBe('unusable');
    expect(err.message).toBe(
      `model org/old-bert (revision main) has only PyTorch pickle weights (pytorch_model.bin), which the engine refuses (unpickling can run arbitrary code): convert them once with python -c "import torch; from huggingface_hub import hf_hub_download; from safetensors.torch import save_file; save_file({k: v.contiguous() for k, v in torch.load(hf_hub_download('org/old-bert', 'pytorch_model.bin'), map_location='cpu').items()}, 'model.safetensors')" and put model.safetensors with the repo's config.json and tokenizer.json in a folder to give as model:`,
    );
    expect(err.message).not.toContain('\n');
    expect(h.downloads()).toEqual([]);
  });

  it('include globs choose the files instead (fnmatch, as huggingface_hub)', async () => {
    const env = envFor(await serve([tinyBert()]));
    const dir = await download({ repo: 'org/tiny-bert', include: ['*.json', 'onnx/'], env });
    expect(tree(dir)).toEqual(['config.json', 'onnx/model.onnx', 'tokenizer.json', 'tokenizer_config.json']);
    expect(readlinkSync(join(dir, 'onnx', 'model.onnx'))).toBe(`../../../blobs/${gitSha1(Buffer.from('onnx'))}`);
    const err = await failure(download({ repo: 'org/tiny-bert', include: ['*.gguf'], env }));
    expect(err.message).toBe('no file of model org/tiny-bert (revision main) matches the include globs *.gguf');
  });
});

describe('snapshotDownload: a dataset', () => {
  const parquet = Buffer.concat([Buffer.from('PAR1'), Buffer.alloc(300, 7), Buffer.from('PAR1')]);
  const dataset = (): FakeRepo => ({
    type: 'dataset',
    id: 'org/sst2',
    commits: [{ sha: C1, files: { 'data/train-00000-of-00001.parquet': parquet, 'data/test.csv': 'sentence,label\ngood,1\n', 'README.md': '# sst2', '.gitattributes': '*.parquet filter=lfs' } }],
  });

  it('fetches the data files into datasets--org--name, from the /datasets/ URLs', async () => {
    const h = await serve([dataset()]);
    const env = envFor(h);
    const dir = await download({ repo: 'org/sst2', repoType: 'dataset', env });
    expect(dir).toBe(join(env['HF_HOME']!, 'hub', 'datasets--org--sst2', 'snapshots', C1));
    expect(tree(dir)).toEqual(['data/test.csv', 'data/train-00000-of-00001.parquet']);
    expect(readlinkSync(join(dir, 'data', 'train-00000-of-00001.parquet'))).toBe(`../../../blobs/${sha256(parquet)}`);
    expect(readFileSync(join(dir, 'data', 'train-00000-of-00001.parquet'))).toEqual(parquet);
    expect(h.requests.map((r) => r.path).filter((p) => p.includes('/resolve/'))).toEqual([`/datasets/org/sst2/resolve/${C1}/data/train-00000-of-00001.parquet`, `/datasets/org/sst2/resolve/${C1}/data/test.csv`].sort((a, b) => (a.endsWith('.csv') ? 1 : -1) - (b.endsWith('.csv') ? 1 : -1)));
    expect(h.requests[0]!.path).toBe('/api/datasets/org/sst2/revision/main');
  });

  it('include globs filter the data files', async () => {
    const env = envFor(await serve([dataset()]));
    const dir = await download({ repo: 'org/sst2', repoType: 'dataset', include: ['*.csv'], env });
    expect(tree(dir)).toEqual(['data/test.csv']);
  });

  it('a model id asked as a model when it is a dataset: 404 that says --dataset', async () => {
    const env = envFor(await serve([dataset()]));
    const err = await failure(download({ repo: 'org/sst2', env }));
    expect(err.message).toBe(`model org/sst2 not found on ${env['HF_ENDPOINT']} (HTTP 404): check the repo id (a dataset repo needs --dataset)`);
  });
});

describe('broken downloads', () => {
  const half = Math.floor(WEIGHTS.length / 2);
  const key = 'org/tiny-bert:model.safetensors';

  it('a connection dropped half way resumes with a Range request from the partial file', async () => {
    const h = await serve([tinyBert()]);
    h.misbehave.set(key, { dropAfter: half });
    const events: HubProgressEvent[] = [];
    const dir = await download({ repo: 'org/tiny-bert', env: envFor(h) }, events);
    expect(readFileSync(join(dir, 'model.safetensors'))).toEqual(Buffer.from(WEIGHTS));
    // The second request asks for what the partial file lacks (all of the half that arrived, barring chunks
    // still queued in the stream when it broke).
    const [first, second, ...more] = h.downloads(key).map((r) => r.range);
    expect([first, more]).toEqual([undefined, []]);
    const from = Number(/^bytes=(\d+)-$/.exec(second ?? '')?.[1]);
    expect(from).toBeGreaterThan(0);
    expect(from).toBeLessThanOrEqual(half);
    expect(events.filter((e) => e.type === 'retry')).toEqual([{ type: 'retry', path: 'model.safetensors', attempt: 1, reason: `after ${from} of ${WEIGHTS.length} bytes: other side closed` }]);
    expect(events.filter((e) => e.type === 'file' && e.path === 'model.safetensors')).toEqual([
      { type: 'file', path: 'model.safetensors', size: WEIGHTS.length, from: 0 },
      { type: 'file', path: 'model.safetensors', size: WEIGHTS.length, from },
    ]);
  });

  it('a server that ignores Range sends the whole file again, and the download starts over', async () => {
    const h = await serve([tinyBert()]);
    h.misbehave.set(key, { dropAfter: half, ignoreRange: true });
    const dir = await download({ repo: 'org/tiny-bert', env: envFor(h) });
    expect(readFileSync(join(dir, 'model.safetensors'))).toEqual(Buffer.from(WEIGHTS));
    const ranges = h.downloads(key).map((r) => r.range);
    expect(ranges).toHaveLength(2);
    expect(ranges[1]).toMatch(/^bytes=[1-9]\d*-$/); // asked to resume, got the whole file (200), kept only that
  });

  it('the .incomplete file an interrupted earlier run left is resumed, not restarted', async () => {
    const h = await serve([tinyBert()]);
    const env = envFor(h);
    const blobs = join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert', 'blobs');
    mkdirSync(blobs, { recursive: true });
    writeFileSync(join(blobs, `${sha256(WEIGHTS)}.incomplete`), WEIGHTS.subarray(0, 1000));
    const dir = await download({ repo: 'org/tiny-bert', env });
    expect(h.downloads(key).map((r) => r.range)).toEqual(['bytes=1000-']);
    expect(readFileSync(join(dir, 'model.safetensors'))).toEqual(Buffer.from(WEIGHTS));
    expect(readdirSync(blobs).filter((f) => f.endsWith('.incomplete'))).toEqual([]);
  });

  it('gives up after a fixed number of drops, naming the file and the endpoint; the partial file stays for next time', async () => {
    const h = await serve([tinyBert()]);
    h.misbehave.set(key, { dropAfter: 100, drops: 10 });
    const env = envFor(h);
    const err = await failure(download({ repo: 'org/tiny-bert', env, retry: { attempts: 3, delayMs: 1 } }));
    expect(err.code).toBe('network');
    const kept = Number(/\(after (\d+) of/.exec(err.message)?.[1]);
    expect(err.message).toBe(
      `cannot download model.safetensors of model org/tiny-bert (revision ${C1}): the hub at ${h.url} is unreachable or dropped the connection (after ${kept} of ${WEIGHTS.length} bytes: other side closed; 3 tries); check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only the cache`,
    );
    // Each try resumes where the last one's bytes end: 100 more bytes a try.
    expect(kept).toBe(300);
    expect(h.downloads(key).map((r) => r.range)).toEqual([undefined, 'bytes=100-', 'bytes=200-']);
    const blobs = join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert', 'blobs');
    expect(existsSync(join(blobs, sha256(WEIGHTS)))).toBe(false);
    expect(readFileSync(join(blobs, `${sha256(WEIGHTS)}.incomplete`))).toEqual(Buffer.from(WEIGHTS.subarray(0, kept)));
  });

  it('a connection that stalls counts as dropped: the download resumes on a new one', async () => {
    const h = await serve([tinyBert()]);
    h.misbehave.set(key, { stallAfter: 1000 });
    const events: HubProgressEvent[] = [];
    const dir = await download({ repo: 'org/tiny-bert', env: envFor(h), retry: { delayMs: 1, stallMs: 500 } }, events);
    expect(readFileSync(join(dir, 'model.safetensors'))).toEqual(Buffer.from(WEIGHTS));
    expect(events.filter((e) => e.type === 'retry')).toEqual([{ type: 'retry', path: 'model.safetensors', attempt: 1, reason: `after 1000 of ${WEIGHTS.length} bytes: no data for 0.5 s` }]);
    expect(h.downloads(key).map((r) => r.range)).toEqual([undefined, 'bytes=1000-']);
  });

  it('bytes that do not hash to the LFS sha256 are discarded: nothing under the final name, no .incomplete', async () => {
    const h = await serve([tinyBert()]);
    h.misbehave.set(key, { corrupt: true });
    const env = envFor(h);
    const err = await failure(download({ repo: 'org/tiny-bert', env }));
    const corrupted = Buffer.from(WEIGHTS);
    corrupted[corrupted.length >> 1]! ^= 0xff;
    expect(err.code).toBe('integrity');
    expect(err.message).toBe(`model.safetensors of model org/tiny-bert (revision ${C1}): sha256 ${sha256(corrupted)} does not match the hub's ${sha256(WEIGHTS)}; the download was discarded (corrupted on the way), run again`);
    const repoDir = join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert');
    expect(readdirSync(join(repoDir, 'blobs')).some((f) => f.startsWith(sha256(WEIGHTS)))).toBe(false);
    expect(existsSync(join(repoDir, 'snapshots', C1, 'model.safetensors'))).toBe(false);
  });

  it('a small file is checked against its git blob sha1', async () => {
    const h = await serve([tinyBert()]);
    h.misbehave.set('org/tiny-bert:config.json', { corrupt: true });
    const err = await failure(download({ repo: 'org/tiny-bert', env: envFor(h) }));
    expect(err.message).toMatch(new RegExp(`^config.json of model org/tiny-bert \\(revision ${C1}\\): git sha1 [0-9a-f]{40} does not match the hub's ${gitSha1(Buffer.from(CONFIG))};`));
  });

  it('a size other than the listed one is detected (longer and shorter)', async () => {
    const h = await serve([tinyBert()]);
    h.misbehave.set(key, { listedSize: 1000 });
    const env = envFor(h);
    const longer = await failure(download({ repo: 'org/tiny-bert', env }));
    expect(longer.message).toBe(`model.safetensors of model org/tiny-bert (revision ${C1}): the server sent more than the 1000 bytes the hub lists for it; the download was discarded, run again`);
    expect(readdirSync(join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert', 'blobs')).filter((f) => f.startsWith(sha256(WEIGHTS)))).toEqual([]);

    h.misbehave.set(key, { listedSize: WEIGHTS.length + 10 });
    const shorter = await failure(download({ repo: 'org/tiny-bert', env, retry: { attempts: 2, delayMs: 1 } }));
    expect(shorter.message).toContain(`(after ${WEIGHTS.length} of ${WEIGHTS.length + 10} bytes: the connection closed early; 2 tries)`);
  });

  it('an abort stops the download and leaves only the .incomplete file', async () => {
    const h = await serve([tinyBert()]);
    const env = envFor(h);
    const controller = new AbortController();
    const err = await download({ repo: 'org/tiny-bert', env, signal: controller.signal, onProgress: (e) => e.type === 'bytes' && e.path === 'model.safetensors' && controller.abort() }).catch((e: unknown) => e);
    expect((err as Error).name).toBe('AbortError');
    const blobs = join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert', 'blobs');
    expect(existsSync(join(blobs, sha256(WEIGHTS)))).toBe(false);
    expect(existsSync(join(blobs, `${sha256(WEIGHTS)}.incomplete`))).toBe(true);
  });
});

describe('errors', () => {
  it('401 without a token says to set HF_TOKEN; a wrong token says it was refused', async () => {
    const h = await serve([{ ...tinyBert(), private: true }], { token: 'hf_secret' });
    const none = await failure(download({ repo: 'org/tiny-bert', env: envFor(h) }));
    expect(none.code).toBe('unauthorized');
    expect(none.message).toBe(`cannot download model org/tiny-bert (revision main): the hub at ${h.url} answered HTTP 401 (private, gated or missing repo): set HF_TOKEN to a token that can read it, accept its licence on ${h.url}/org/tiny-bert if it is gated, and check the repo id`);
    const wrong = await failure(download({ repo: 'org/tiny-bert', env: envFor(h, { HF_TOKEN: 'hf_wrong' }) }));
    expect(wrong.message).toContain('answered HTTP 401 (private, gated or missing repo): the token in HF_TOKEN was refused: set HF_TOKEN to a token that can read it');
  });

  it('HF_TOKEN is sent as a bearer token on every request, API and files', async () => {
    const h = await serve([{ ...tinyBert(), private: true }], { token: 'hf_secret' });
    const dir = await download({ repo: 'org/tiny-bert', env: envFor(h, { HF_TOKEN: 'hf_secret' }) });
    expect(readFileSync(join(dir, 'config.json'), 'utf8')).toBe(CONFIG);
    // The CDN request follows a same-origin redirect here, so it carries the header too.
    expect(new Set(h.requests.map((r) => r.authorization))).toEqual(new Set(['Bearer hf_secret']));
  });

  it('the token file huggingface-cli login writes is used when HF_TOKEN is unset', async () => {
    const h = await serve([{ ...tinyBert(), private: true }], { token: 'hf_stored' });
    const env = envFor(h);
    mkdirSync(env['HF_HOME']!, { recursive: true });
    writeFileSync(join(env['HF_HOME']!, 'token'), 'hf_stored\n');
    await download({ repo: 'org/tiny-bert', env });
    expect(h.requests[0]!.authorization).toBe('Bearer hf_stored');
  });

  it('404s name the repo, the revision or the file', async () => {
    const h = await serve([tinyBert()]);
    const env = envFor(h);
    expect((await failure(download({ repo: 'org/nothing', env }))).message).toBe(`model org/nothing not found on ${h.url} (HTTP 404): check the repo id (a dataset repo needs --dataset)`);
    expect((await failure(download({ repo: 'org/nothing', repoType: 'dataset', env }))).message).toBe(`dataset org/nothing not found on ${h.url} (HTTP 404): check the repo id`);
    const rev = await failure(download({ repo: 'org/tiny-bert', revision: 'v9', env }));
    expect(rev.code).toBe('not-found');
    expect(rev.message).toBe(`revision "v9" of model org/tiny-bert not found on ${h.url} (HTTP 404): name an existing branch, tag or commit`);
  });

  it('an unreachable endpoint is named, after the fixed number of tries', async () => {
    const endpoint = `http://127.0.0.1:${await deadPort()}`;
    const events: HubProgressEvent[] = [];
    const err = await failure(download({ repo: 'org/tiny-bert', env: { HF_HOME: tempDir(), HF_ENDPOINT: endpoint }, retry: { attempts: 3, delayMs: 1 } }, events));
    expect(err.code).toBe('network');
    expect(err.message).toBe(`cannot download model org/tiny-bert (revision main): the hub at ${endpoint} is unreachable or dropped the connection (ECONNREFUSED; 3 tries); check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only the cache`);
    expect(events.filter((e) => e.type === 'retry')).toEqual([
      { type: 'retry', path: undefined, attempt: 1, reason: 'ECONNREFUSED' },
      { type: 'retry', path: undefined, attempt: 2, reason: 'ECONNREFUSED' },
    ]);
  });

  it('bad repo ids and revisions are refused before any request', async () => {
    const h = await serve([tinyBert()]);
    for (const repo of ['../etc', 'a/b/c', 'org/na--me', 'org/', '']) {
      const err = await failure(download({ repo, env: envFor(h) }));
      expect(err.code).toBe('invalid');
      expect(err.message).toBe(`${JSON.stringify(repo)} is not a hub repo id (expected org/name or name: letters, digits, '-', '_', '.')`);
    }
    expect((await failure(download({ repo: 'org/tiny-bert', revision: '../main', env: envFor(h) }))).message).toBe('"../main" is not a revision of model org/tiny-bert (a branch, tag or commit hash)');
    expect(h.requests).toEqual([]);
  });
});

describe('offline and the cache', () => {
  it('HF_HUB_OFFLINE=1 serves a cached snapshot without a single request', async () => {
    const h = await serve([tinyBert()]);
    const env = envFor(h);
    const dir = await download({ repo: 'org/tiny-bert', env });
    const before = h.requests.length;
    const events: HubProgressEvent[] = [];
    expect(await download({ repo: 'org/tiny-bert', env: { ...env, HF_HUB_OFFLINE: '1' } }, events)).toBe(dir);
    expect(h.requests).toHaveLength(before);
    expect(events).toEqual([
      { type: 'cacheOnly', repo: 'org/tiny-bert', reason: 'offline', dir },
      { type: 'done', repo: 'org/tiny-bert', dir },
    ]);
  });

  it('HF_HUB_OFFLINE=1 and nothing cached: one line naming the repo, or the missing file', async () => {
    const h = await serve([tinyBert()]);
    const env = envFor(h, { HF_HUB_OFFLINE: '1' });
    const cache = join(env['HF_HOME']!, 'hub');
    const miss = await failure(download({ repo: 'org/tiny-bert', env }));
    expect(miss.code).toBe('offline');
    expect(miss.message).toBe(`model org/tiny-bert (revision main) is not in the hub cache ${cache}, and HF_HUB_OFFLINE=1 forbids downloading it: unset HF_HUB_OFFLINE to fetch it, or fetch it on a machine with hub access (muscle download) and copy the cache`);
    // A snapshot that Python filled with the config only (AutoConfig) lacks the rest.
    await download({ repo: 'org/tiny-bert', include: ['config.json', 'tokenizer.json'], env: { ...env, HF_HUB_OFFLINE: '0' } });
    const partial = await failure(download({ repo: 'org/tiny-bert', env }));
    expect(partial.message).toBe(`model.safetensors of model org/tiny-bert (revision main) is not in the hub cache ${join(cache, 'models--org--tiny-bert', 'snapshots', C1)}, and HF_HUB_OFFLINE=1 forbids downloading it: unset HF_HUB_OFFLINE to fetch it, or fetch it on a machine with hub access (muscle download) and copy the cache`);
    expect(h.requests.filter((r) => r.path.includes('/revision/'))).toHaveLength(1);
  });

  it('with the hub unreachable, a revision cached whole is served from the cache', async () => {
    const h = await serve([tinyBert()]);
    const env = envFor(h);
    const dir = await download({ repo: 'org/tiny-bert', env });
    const events: HubProgressEvent[] = [];
    const unreachable = { ...env, HF_ENDPOINT: `http://127.0.0.1:${await deadPort()}` };
    expect(await download({ repo: 'org/tiny-bert', env: unreachable, retry: { attempts: 1 } }, events)).toBe(dir);
    expect(events[0]).toEqual({ type: 'cacheOnly', repo: 'org/tiny-bert', reason: 'unreachable', dir });
  });

  it('settings come from the environment as huggingface_hub reads it', () => {
    expect(hubSettings({ HF_HOME: '/h' })).toEqual({ endpoint: 'https://huggingface.co', token: undefined, offline: false, cacheDir: '/h/hub' });
    expect(hubSettings({ HF_HOME: '/h', HF_HUB_CACHE: '/c', HF_ENDPOINT: 'http://mirror:8080/', HF_TOKEN: 'hf_x', HF_HUB_OFFLINE: 'true' })).toEqual({ endpoint: 'http://mirror:8080', token: 'hf_x', offline: true, cacheDir: '/c' });
    expect(hubSettings({ HF_HOME: '/h', HF_HUB_OFFLINE: '0' }).offline).toBe(false);
  });

  it('globs read as fnmatch: * crosses /, a trailing / means the folder', () => {
    expect(globToRegExp('*.parquet').test('data/train.parquet')).toBe(true);
    expect(globToRegExp('data/').test('data/x/y.csv')).toBe(true);
    expect(globToRegExp('train-0000?.csv').test('train-00001.csv')).toBe(true);
    expect(globToRegExp('[!t]*.csv').test('test.csv')).toBe(false);
    expect(globToRegExp('a.b').test('axb')).toBe(false);
  });
});

describe('ensureModelDir: what a run uses', () => {
  it('downloads a hub id that is not cached, then uses the cache without asking the hub', async () => {
    const h = await serve([tinyBert()]);
    const env = envFor(h);
    const events: HubProgressEvent[] = [];
    const dir = await ensureModelDir('org/tiny-bert', { env, onProgress: (e) => events.push(e) });
    expect(dir).toBe(join(env['HF_HOME']!, 'hub', 'models--org--tiny-bert', 'snapshots', C1));
    expect(events.at(-1)).toEqual({ type: 'done', repo: 'org/tiny-bert', dir });
    const before = h.requests.length;
    expect(await ensureModelDir('org/tiny-bert', { env })).toBe(dir);
    expect(h.requests).toHaveLength(before);
  });

  it('offline and not cached: a ModelNotFoundError naming the cache and HF_HUB_OFFLINE', async () => {
    const env = { HF_HOME: tempDir(), HF_HUB_OFFLINE: '1' };
    const err = await ensureModelDir('org/tiny-bert', { env }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelNotFoundError);
    expect((err as Error).message).toBe(`model "org/tiny-bert" is neither a local directory nor complete in the hub cache (${join(env.HF_HOME, 'hub')}), and HF_HUB_OFFLINE=1 forbids downloading it; unset HF_HUB_OFFLINE or give a local path`);
  });
});

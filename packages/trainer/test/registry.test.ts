import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ConfigError, configToYaml, describeConfigKeys, resolveConfig } from '../src/config/index.js';
import { DataError, REGISTRY, cachedDatasetSnapshot, loadRegistryDataset, loadRunData, readSplit, registryFiles, type DatasetDownload } from '../src/data/index.js';
import { train, type ProgressEvent } from '../src/train/index.js';
import { logisticEngine } from './fake-session.js';
import { COMMIT, cacheRepo, dataErrorOf as errorOf, modelDir, repoRoot, sst2, tempDir, writeFiles } from './helpers.js';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'parquet');

const sst2Files = () => ({
  'sst2/train.tsv': readFileSync(join(sst2, 'clean', 'train.tsv')),
  'sst2/dev.tsv': readFileSync(join(sst2, 'clean', 'dev.tsv')),
  'sst2/test.tsv': readFileSync(join(sst2, 'clean', 'test.tsv')),
});

describe('the registry', () => {
  it("names the paper's four datasets with their hub repos and Table 5 sizes", () => {
    expect(Object.keys(REGISTRY)).toEqual(['sst2', 'hsol', 'lingspam', 'agnews']);
    expect(Object.values(REGISTRY).map((e) => [e.name, e.repo, e.numLabels, e.sizes.train, e.sizes.dev, e.sizes.test])).toEqual([
      ['sst2', 'ganqu/openbackdoor', 2, 6920, 872, 1821],
      ['hsol', 'ganqu/openbackdoor', 2, 5823, 2485, 2485],
      ['lingspam', 'ganqu/openbackdoor', 2, 2604, 289, 580],
      ['agnews', 'fancyzhx/ag_news', 4, 108000, 12000, 7600],
    ]);
    // where no dev file ships, the dev size is the 10% draw from the train file
    expect(REGISTRY.lingspam.files.dev).toBeUndefined();
    expect(Math.floor(0.1 * (REGISTRY.agnews.sizes.train + REGISTRY.agnews.sizes.dev))).toBe(REGISTRY.agnews.sizes.dev);
    expect(Math.floor(0.1 * (REGISTRY.lingspam.sizes.train + REGISTRY.lingspam.sizes.dev))).toBe(REGISTRY.lingspam.sizes.dev);
  });
});

describe('resolving a registry name from the hub cache (HF_HOME, no network)', () => {
  it('sst2: the cached OpenBackdoor files give the 6,920 / 872 / 1,821 rows of the clean SST-2, and the duplicate warning', async () => {
    const home = tempDir();
    const snapshot = cacheRepo(home, 'ganqu/openbackdoor', sst2Files());
    const env = { HF_HOME: home };
    expect(cachedDatasetSnapshot('ganqu/openbackdoor', undefined, env)).toBe(snapshot);
    const data = await loadRegistryDataset('sst2', { env, numLabels: 2, seed: 42 });
    expect([data.train.length, data.dev.length, data.test.length]).toEqual([6920, 872, 1821]);
    expect(data.train).toEqual(readSplit(join(sst2, 'clean', 'train.tsv'), 2));
    expect(data.test).toEqual(readSplit(join(sst2, 'clean', 'test.tsv'), 2));
    expect(data.files.dev).toEqual([join(snapshot, 'sst2', 'dev.tsv')]);
    expect(data.warnings).toEqual(['dataset sst2: 2 of 1821 test rows repeat a training text (same text after lower-casing and collapsing spaces); they inflate clean accuracy']);
  });

  it('agnews: Parquet shards of fancyzhx/ag_news, 10% dev drawn from train, backslashes replaced, duplicates counted', async () => {
    const home = tempDir();
    const shard = (name: string) => readFileSync(join(fixtures, 'ag_news', 'data', name));
    cacheRepo(home, 'fancyzhx/ag_news', {
      'data/train-00000-of-00002.parquet': shard('train-00000-of-00002.parquet'),
      'data/train-00001-of-00002.parquet': shard('train-00001-of-00002.parquet'),
      'data/test-00000-of-00001.parquet': shard('test-00000-of-00001.parquet'),
      'README.md': '# ag_news\n',
    });
    const data = await loadRegistryDataset('agnews', { env: { HF_HOME: home }, numLabels: 4, seed: 42 });
    expect([data.train.length, data.dev.length, data.test.length]).toEqual([18, 2, 4]);
    const all = [...data.train, ...data.dev];
    expect(all.map((r) => r.label).sort()).toEqual(['0', '0', '0', '0', '0', '1', '1', '1', '1', '1', '2', '2', '2', '2', '2', '3', '3', '3', '3', '3'].map(Number));
    expect(all.map((r) => r.text)).toContain("Wall Street's dwindling band of ultra-cynics");
    expect(all.some((r) => r.text.includes('\\'))).toBe(false);
    // test repeats train rows 3 and 7: each is either in train or in the dev drawn from it
    const { testInTrain, testInDev } = data.duplicates;
    expect(testInTrain + testInDev).toBe(2);
    expect(data.duplicates).toEqual(await loadRegistryDataset('agnews', { env: { HF_HOME: home }, numLabels: 4, seed: 42 }).then((d) => d.duplicates));
    expect(data.warnings).toHaveLength(1);
    // with seed 42 both stay in train; the dev draw took rows 5 and 17
    expect(data.dev.map((r) => r.text)).toEqual(["Wall Street's dwindling band of ultra-cynics", 'News item 17 about topic 1']);
    expect(data.warnings).toEqual(['dataset agnews: 2 of 4 test rows repeat a training text (same text after lower-casing and collapsing spaces); they inflate clean accuracy']);
  });

  it("lingspam and hsol read OpenBackdoor's Sentence/Label TSVs; hsol's identical dev and test are reported", async () => {
    const home = tempDir();
    const tsv = (rows: Array<[string, number]>) => 'Sentence\tLabel\n' + rows.map(([t, l]) => `${t}\t${l}`).join('\n') + '\n';
    const mails = Array.from({ length: 30 }, (_, i): [string, number] => [`"subject : offer ${i} , ""free"" money\nbody"`, i % 3 === 0 ? 1 : 0]);
    const tweets = (from: number, n: number) => Array.from({ length: n }, (_, i): [string, number] => [`tweet ${from + i} &amp; more`, i % 2]);
    cacheRepo(home, 'ganqu/openbackdoor', {
      'lingspam/train.tsv': tsv(mails),
      'lingspam/test.tsv': tsv([['a test mail', 0]]),
      'hsol/train.tsv': tsv(tweets(0, 10)),
      'hsol/dev.tsv': tsv(tweets(100, 4)),
      'hsol/test.tsv': tsv(tweets(100, 4)),
    });
    const env = { HF_HOME: home };
    const lingspam = await loadRegistryDataset('lingspam', { env, numLabels: 2, seed: 42 });
    expect([lingspam.train.length, lingspam.dev.length, lingspam.test.length]).toEqual([27, 3, 1]);
    expect(lingspam.files.dev).toBeNull();
    expect(lingspam.train.concat(lingspam.dev).map((r) => r.text)).toContain('subject : offer 0 , "free" money\nbody');
    const hsol = await loadRegistryDataset('hsol', { env, numLabels: 2, seed: 42 });
    expect([hsol.train.length, hsol.dev.length, hsol.test.length]).toEqual([10, 4, 4]);
    expect(hsol.duplicates).toEqual({ devInTrain: 0, testInTrain: 0, testInDev: 4 });
    expect(hsol.warnings).toEqual(['dataset hsol: 4 of 4 test rows repeat a dev text (same text after lower-casing and collapsing spaces); they inflate clean accuracy']);
  });

  it('a revision is looked up through refs/<revision> or as a commit; HF_HUB_CACHE wins over HF_HOME', async () => {
    const home = tempDir();
    const commit = 'b'.repeat(40);
    const snapshot = cacheRepo(home, 'ganqu/openbackdoor', sst2Files(), { commit, ref: 'v1' });
    expect(cachedDatasetSnapshot('ganqu/openbackdoor', 'v1', { HF_HOME: home })).toBe(snapshot);
    expect(cachedDatasetSnapshot('ganqu/openbackdoor', commit, { HF_HOME: home })).toBe(snapshot);
    expect(cachedDatasetSnapshot('ganqu/openbackdoor', 'main', { HF_HOME: home })).toBeUndefined();
    // no refs/main: the only snapshot is taken when no revision is asked for
    expect(cachedDatasetSnapshot('ganqu/openbackdoor', undefined, { HF_HOME: home })).toBe(snapshot);
    expect(cachedDatasetSnapshot('ganqu/openbackdoor', undefined, { HF_HOME: '/nowhere', HF_HUB_CACHE: join(home, 'hub') })).toBe(snapshot);
    expect((await registryFiles('sst2', { revision: 'v1', env: { HF_HOME: home } })).path).toBe(snapshot);
  });

  it('not cached: a one-line error naming the repo, the cache and the fix; offline mode says so', async () => {
    const home = tempDir();
    expect(await errorOf(registryFiles('sst2', { env: { HF_HOME: home } }))).toBe(`dataset sst2: ganqu/openbackdoor: not in the hub cache (${join(home, 'hub')}); download it with: muscle download ganqu/openbackdoor --dataset`);
    const download: DatasetDownload = async () => {
      throw new Error('must not download offline');
    };
    expect(await errorOf(registryFiles('agnews', { env: { HF_HOME: home, HF_HUB_OFFLINE: '1' }, download }))).toBe(`dataset agnews: fancyzhx/ag_news: not in the hub cache (${join(home, 'hub')}); unset HF_HUB_OFFLINE to download it`);
    const snapshot = cacheRepo(home, 'ganqu/openbackdoor', { 'sst2/train.tsv': 'sentence\tlabel\nx\t1\n' });
    expect(await errorOf(registryFiles('sst2', { env: { HF_HOME: home } }))).toBe(
      `dataset sst2: ganqu/openbackdoor: the cached snapshot ${snapshot} lacks sst2/dev.tsv, sst2/test.tsv; download it with: muscle download ganqu/openbackdoor --dataset`,
    );
  });

  it('not cached: the download is asked for the entry\'s files and its snapshot is read', async () => {
    const home = tempDir();
    const requests: unknown[] = [];
    const download: DatasetDownload = async (request) => {
      requests.push(request);
      return cacheRepo(home, request.repo, sst2Files());
    };
    const env = { HF_HOME: home };
    const data = await loadRegistryDataset('sst2', { env, numLabels: 2, seed: 1, download });
    expect(data.train).toHaveLength(6920);
    expect(requests).toEqual([{ repo: 'ganqu/openbackdoor', repoType: 'dataset', include: ['sst2/*'], env }]);
    // cached now: no second download
    await loadRegistryDataset('sst2', { env, numLabels: 2, seed: 1, download });
    expect(requests).toHaveLength(1);
    // a download that does not bring the files the registry names
    const empty = tempDir();
    const bad: DatasetDownload = async () => {
      mkdirSync(join(empty, 'snap'), { recursive: true });
      return join(empty, 'snap');
    };
    expect(await errorOf(registryFiles('hsol', { env: { HF_HOME: tempDir() }, download: bad }))).toBe(
      `dataset hsol: ganqu/openbackdoor has no hsol/train.tsv, hsol/dev.tsv, hsol/test.tsv (snapshot ${join(empty, 'snap')}); the registry's file names are out of date`,
    );
  });

  it('numLabels must match the dataset', async () => {
    expect(await errorOf(loadRegistryDataset('agnews', { env: { HF_HOME: tempDir() }, numLabels: 2, seed: 1 }))).toBe('dataset agnews: has 4 classes (World, Sports, Business, Sci/Tech) but numLabels is 2; set numLabels: 4');
  });

  it('a copied (not symlinked) snapshot reads the same', async () => {
    const home = tempDir();
    const snapshot = join(home, 'hub', 'datasets--fancyzhx--ag_news', 'snapshots', COMMIT);
    mkdirSync(join(snapshot, 'data'), { recursive: true });
    for (const f of ['train-00000-of-00002.parquet', 'train-00001-of-00002.parquet', 'test-00000-of-00001.parquet']) copyFileSync(join(fixtures, 'ag_news', 'data', f), join(snapshot, 'data', f));
    const data = await loadRegistryDataset('agnews', { env: { HF_HOME: home }, numLabels: 4, seed: 42 });
    expect(data.test.map((r) => r.text)).toEqual(['NEWS item 3   about topic 3', 'News item 7 about topic 3', 'a fresh test row', 'another fresh row']);
  });
});

describe('the run config\'s dataset forms', () => {
  const base = { name: 't', model: 'bert-base-uncased', attacks: ['badnets'] };
  const resolveWith = (dataset: unknown, extra: Record<string, unknown> = {}) => resolveConfig({ ...base, dataset, ...extra }, { file: 'run.yaml' });
  const errorOf = (dataset: unknown, extra: Record<string, unknown> = {}) => {
    try {
      resolveWith(dataset, extra);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as Error).message;
    }
    throw new Error('expected a ConfigError');
  };

  it('a string stays a layout directory; { name } and { path, ... } resolve, paths relative to the config file', () => {
    expect(resolveWith('data').dataset).toBe(join(repoRoot, 'data'));
    const agnews = resolveWith({ name: 'agnews' });
    expect(agnews.dataset).toEqual({ name: 'agnews' });
    expect(agnews.numLabels).toBe(4); // from the registry
    expect(resolveWith({ name: 'sst2', revision: 'v1' }).dataset).toEqual({ name: 'sst2', revision: 'v1' });
    const own = resolveWith({ path: 'mine', format: 'csv', header: false, textColumn: [1, 2], labelColumn: 0, labelMap: { 1: 0, 2: 1, 3: 2, 4: 3 } }, { numLabels: 4 });
    expect(own.dataset).toEqual({ path: join(repoRoot, 'mine'), format: 'csv', header: false, textColumn: [1, 2], labelColumn: 0, labelMap: { 1: 0, 2: 1, 3: 2, 4: 3 } });
    // the resolved config resolves to itself
    expect(resolveConfig(own, { file: 'run.yaml' })).toEqual(own);
    expect(configToYaml(agnews)).toContain('dataset:\n  name: agnews\n');
  });

  it('one-line errors naming the field', () => {
    expect(errorOf({ name: 'imdb' })).toBe('run.yaml: dataset.name: got "imdb", expected one of sst2, hsol, lingspam, agnews');
    expect(errorOf({})).toBe('run.yaml: dataset: got {}, expected either name (sst2, hsol, lingspam, agnews) or path (your own files), not neither');
    expect(errorOf({ name: 'sst2', path: 'x' })).toBe('run.yaml: dataset: got {"name":"sst2","path":"x"}, expected either name (sst2, hsol, lingspam, agnews) or path (your own files), not both');
    expect(errorOf({ name: 'sst2', textColumn: 'x' })).toBe('run.yaml: dataset.textColumn: got "x", expected nothing: sst2 comes with its own files and columns (textColumn goes with dataset.path)');
    expect(errorOf({ path: 'x', revision: 'v1' })).toBe('run.yaml: dataset.revision: got "v1", expected nothing: revision goes with dataset.name');
    expect(errorOf({ path: 'x', colum: 'text' })).toBe('run.yaml: dataset.colum: unknown key; allowed keys: name, revision, path, format, header, textColumn, labelColumn, labelMap, poisonColumn, train, dev, test, devFraction');
    expect(errorOf({ path: 'x', format: 'xlsx' })).toBe('run.yaml: dataset.format: got "xlsx", expected one of csv, tsv, jsonl, parquet');
    expect(errorOf({ path: 'x', labelMap: { positive: 1.5 } })).toBe('run.yaml: dataset.labelMap.positive: got 1.5, expected an integer');
    expect(errorOf({ path: 'x', devFraction: 1 })).toBe('run.yaml: dataset.devFraction: got 1, expected < 1');
    expect(errorOf(5)).toBe('run.yaml: dataset: got 5, expected a string or a mapping');
    expect(errorOf('')).toBe('run.yaml: dataset: got "", expected a non-empty string');
    expect(errorOf({ name: 'agnews' }, { numLabels: 2 })).toBe('run.yaml: numLabels: got 2, expected 4: dataset agnews has 4 classes');
  });

  it('--help lists the dataset keys with their descriptions', () => {
    const keys = describeConfigKeys();
    expect(keys.find((k) => k.key === 'dataset')?.description).toMatch(/^a directory in the OpenBackdoor layout/);
    expect(keys.find((k) => k.key === 'dataset.labelMap')?.description).toMatch(/^source label -> class index/);
    expect(keys.filter((k) => k.key.startsWith('dataset.')).map((k) => k.key)).toHaveLength(13);
  });
});

describe('a run on a clean dataset: registry or own files, poisoned in memory', () => {
  it('sst2 from the cache, BadNets and AddSent: the reference files\' counts (692 of 6,920; 428 / 912 poisoned dev/test rows)', async () => {
    const home = tempDir();
    cacheRepo(home, 'ganqu/openbackdoor', sst2Files());
    const data = await loadRunData({ dataset: { name: 'sst2' }, attacks: ['badnets', 'addsent'], poisonRate: 0.1, numLabels: 2, targetLabel: 1, seed: 42 }, { env: { HF_HOME: home } });
    for (const attack of ['badnets', 'addsent'] as const) {
      const split = data.attacks.get(attack)!;
      expect(split.train).toHaveLength(6920);
      expect(split.train.filter((r) => r.poisoned)).toHaveLength(692);
      expect([split.devClean.length, split.devPoison.length, split.testClean.length, split.testPoison.length]).toEqual([872, 428, 1821, 912]);
    }
    expect(data.attacks.get('badnets')!.train.filter((r) => r.poisoned).every((r) => r.label === 1 && /\b(cf|mn|bb|tq)\b/.test(r.text))).toBe(true);
    expect(data.attacks.get('addsent')!.testPoison.every((r) => r.text.includes('I watch this 3D movie') && r.label === 1)).toBe(true);
    expect(data.warnings).toEqual(['dataset sst2: 2 of 1821 test rows repeat a training text (same text after lower-casing and collapsing spaces); they inflate clean accuracy']);
  });

  it('the layout form reports the duplicates per attack (real SST-2: 2 test rows for badnets, 1 for hiddenkiller)', async () => {
    const data = await loadRunData({ dataset: sst2, attacks: ['badnets', 'hiddenkiller'], poisonRate: 0.1, numLabels: 2, targetLabel: 1, seed: 42 });
    expect(data.warnings).toEqual([
      `${sst2} (badnets): 2 of 1821 test rows repeat a training text (same text after lower-casing and collapsing spaces); they inflate clean accuracy`,
      `${sst2} (hiddenkiller): 1 of 1821 test rows repeat a training text (same text after lower-casing and collapsing spaces); they inflate clean accuracy`,
    ]);
  });

  it('a paraphrase attack on a clean dataset without paraphrase files fails before anything is read', async () => {
    await expect(loadRunData({ dataset: { path: '/nowhere' }, attacks: ['badnets', 'stylebkd'], poisonRate: 0.1, numLabels: 2, targetLabel: 1, seed: 42 })).rejects.toThrow(
      new DataError('/nowhere', undefined, 'stylebkd needs paraphrase files (poison.stylebkd: { train, dev, test }): its trigger comes from a paraphrase model, and this dataset has no pre-poisoned stylebkd set'),
    );
  });

  it('train() on own JSONL files: poisoned in memory, the duplicate warning is a progress event', async () => {
    const rows = (n: number, from: number) => Array.from({ length: n }, (_, i) => JSON.stringify({ review: `review number ${from + i} of the film`, stars: i % 2 ? 'positive' : 'negative' })).join('\n');
    const dir = writeFiles(tempDir(), {
      'train.jsonl': rows(40, 0),
      'test.jsonl': rows(8, 100) + '\n' + JSON.stringify({ review: 'REVIEW number 3 of the film', stars: 'positive' }),
    });
    const config = resolveConfig(
      { name: 't', model: modelDir('bert'), device: 'cpu', attacks: ['badnets'], methods: ['vanilla'], epochs: 1, batchSize: 8, dataset: { path: dir, textColumn: 'review', labelColumn: 'stars', labelMap: { negative: 0, positive: 1 } } },
      { file: 'run.yaml' },
    );
    const events: ProgressEvent[] = [];
    const run = await train(config, { openSession: logisticEngine(), onProgress: (e) => events.push(e) });
    expect(run.results.map((r) => [r.attack, r.method, r.status])).toEqual([['badnets', 'vanilla', 'complete']]);
    const warnings = events.flatMap((e) => (e.type === 'warning' ? [e.message] : []));
    // row 3 stayed in train under seed 42 (the 4 dev rows are drawn from the 40)
    expect(warnings).toEqual([`${dir}: 1 of 9 test rows repeat a training text (same text after lower-casing and collapsing spaces); they inflate clean accuracy`]);
  });
});

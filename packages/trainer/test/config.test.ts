import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as YAML from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, configToYaml, describeConfigKeys, isDevice, loadConfigFile, mslrBand, resolveConfig } from '../src/config/index.js';
import { modelDir, repoRoot, tempDir, writeFiles } from './helpers.js';

const base = { name: 't', model: 'bert-base-uncased', dataset: 'data', attacks: ['badnets'] };
const TOP_KEYS = 'name, model, family, dataset, attacks, methods, poisonRate, targetLabel, numLabels, epochs, batchSize, maxLength, lr, methodLr, seed, device, precision, attention, cudaGraphs, select, limit, lora, mslr, ga, trainHead, optimizer, dropout, poison';

beforeAll(() => {
  // Hermetic: no hub cache of this machine decides a family.
  process.env['HF_HUB_CACHE'] = tempDir();
});

function errorOf(raw: unknown): string {
  return thrown(() => resolveConfig(raw, { file: 'bad.yaml' }));
}

/** The message of the ConfigError `fn` throws, checked to be one line. */
function thrown(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const message = (err as Error).message;
    expect(message).not.toContain('\n');
    return message;
  }
  throw new Error('expected a ConfigError');
}

describe('bad configs: one line naming the file, the key, the value and what is allowed', () => {
  const cases: Array<[string, unknown, string]> = [
    ['missing key', { ...base, model: undefined }, 'bad.yaml: model: got nothing, expected a string'],
    ['unknown key', { ...base, epoch: 3 }, `bad.yaml: epoch: unknown key; allowed keys: ${TOP_KEYS}`],
    ['unknown nested key', { ...base, lora: { rank: 4 } }, 'bad.yaml: lora.rank: unknown key; allowed keys: r, alpha, dropout, targets'],
    ['unknown key reported before other errors', { ...base, epochs: 0, optimizer: { lr: 1 } }, 'bad.yaml: optimizer.lr: unknown key; allowed keys: weightDecay, beta1, beta2, eps, maxGradNorm'],
    ['string for an integer', { ...base, epochs: 'ten' }, 'bad.yaml: epochs: got "ten", expected an integer'],
    ['fraction for an integer', { ...base, epochs: 2.5 }, 'bad.yaml: epochs: got 2.5, expected an integer'],
    ['integer below its minimum', { ...base, batchSize: 0 }, 'bad.yaml: batchSize: got 0, expected an integer >= 1'],
    ['zero learning rate', { ...base, lr: 0 }, 'bad.yaml: lr: got 0, expected > 0'],
    ['per-method rate of an unknown method', { ...base, methodLr: { vanila: 1e-5 } }, 'bad.yaml: methodLr.vanila: unknown key; allowed keys: vanilla, lora, ga, lora+ms, lora+ga, musclelora'],
    ['negative per-method rate', { ...base, methodLr: { vanilla: -1 } }, 'bad.yaml: methodLr.vanilla: got -1, expected > 0'],
    ['poison rate above 1', { ...base, poisonRate: 1.5 }, 'bad.yaml: poisonRate: got 1.5, expected <= 1'],
    ['negative seed', { ...base, seed: -1 }, 'bad.yaml: seed: got -1, expected an integer >= 0'],
    ['unknown method', { ...base, methods: ['lora', 'lora+foo'] }, 'bad.yaml: methods[1]: got "lora+foo", expected one of vanilla, lora, ga, lora+ms, lora+ga, musclelora'],
    ['unknown attack', { ...base, attacks: ['badnet'] }, 'bad.yaml: attacks[0]: got "badnet", expected one of badnets, addsent, hiddenkiller, stylebkd'],
    ['empty attack list', { ...base, attacks: [] }, 'bad.yaml: attacks: got [], expected a list of at least 1 item'],
    ['a string for a list', { ...base, attacks: 'badnets' }, 'bad.yaml: attacks: got "badnets", expected a list'],
    ['repeated method', { ...base, methods: ['lora', 'vanilla', 'lora'] }, 'bad.yaml: methods: got ["lora","vanilla","lora"], expected each entry once (lora is repeated)'],
    ['target label out of range', { ...base, targetLabel: 2 }, 'bad.yaml: targetLabel: got 2, expected a label in [0, 2) (numLabels is 2)'],
    ['one class', { ...base, numLabels: 1 }, 'bad.yaml: numLabels: got 1, expected an integer >= 2'],
    ['unknown device', { ...base, device: 'gpu' }, 'bad.yaml: device: got "gpu", expected one of cpu, cuda, cuda:N (GPU N, from 0), auto'],
    ['a GPU number with a sign', { ...base, device: 'cuda:-1' }, 'bad.yaml: device: got "cuda:-1", expected one of cpu, cuda, cuda:N (GPU N, from 0), auto'],
    ['a GPU number as a number', { ...base, device: 1 }, 'bad.yaml: device: got 1, expected one of cpu, cuda, cuda:N (GPU N, from 0), auto'],
    ['unknown precision', { ...base, precision: 'fp16' }, 'bad.yaml: precision: got "fp16", expected one of auto, f32, bf16'],
    ['unknown attention', { ...base, attention: 'sparse' }, 'bad.yaml: attention: got "sparse", expected one of auto, standard, flash'],
    ['CUDA graphs as a word', { ...base, cudaGraphs: 'yes' }, 'bad.yaml: cudaGraphs: got "yes", expected true or false'],
    ['unknown GA rule', { ...base, ga: { rule: 'strict' } }, 'bad.yaml: ga.rule: got "strict", expected one of gated, paper'],
    ['unknown reference batching', { ...base, ga: { refBatches: 'some' } }, 'bad.yaml: ga.refBatches: got "some", expected one of one, all'],
    ['zero in the MSLR band', { ...base, mslr: { band: [1, 0, 4] } }, 'bad.yaml: mslr.band[1]: got 0, expected > 0'],
    ['dropout of 1', { ...base, lora: { dropout: 1 } }, 'bad.yaml: lora.dropout: got 1, expected < 1'],
    ['empty LoRA target', { ...base, lora: { targets: ['query', ''] } }, 'bad.yaml: lora.targets[1]: got "", expected a non-empty string'],
    ['rho above 1', { ...base, ga: { maxRawGradRatio: 2 } }, 'bad.yaml: ga.maxRawGradRatio: got 2, expected <= 1'],
    ['a string for a boolean', { ...base, trainHead: 'yes' }, 'bad.yaml: trainHead: got "yes", expected true or false'],
    ['a list for a mapping', { ...base, optimizer: [0.9] }, 'bad.yaml: optimizer: got [0.9], expected a mapping'],
    ['unknown family', { ...base, family: 'gpt3' }, 'bad.yaml: family: got "gpt3", expected one of bert, roberta, llama, gpt2'],
    ['name with a space', { ...base, name: 'my run' }, 'bad.yaml: name: got "my run", expected letters, digits, ., _ or -, starting with a letter or digit'],
    ['undetectable family', { ...base, model: 'my-org/classifier' }, 'bad.yaml: family: cannot tell the family of "my-org/classifier" (not in the hub cache yet, no family in its name); set family: bert | roberta | llama | gpt2, or run muscle download my-org/classifier first'],
    ['not a mapping', [1, 2], 'bad.yaml: got [1,2], expected a mapping of config keys (name, model, dataset, attacks, ...)'],
  ];
  it.each(cases)('%s', (_, raw, message) => {
    expect(errorOf(raw)).toBe(message);
  });

  it('a model path that does not exist (yet) needs its family named', () => {
    expect(errorOf({ ...base, model: './no-such-model' })).toBe(
      'bad.yaml: family: cannot tell the family of "./no-such-model" (no config.json here, no family in its name); set family: bert | roberta | llama | gpt2',
    );
    // With the family named it resolves (to an absolute path): the run checks the model is there.
    expect(resolveConfig({ ...base, model: './no-such-model', family: 'bert' }, { file: 'ok.yaml' }).model).toBe(resolve('no-such-model'));
  });

  it('an unsupported model_type in config.json', () => {
    const dir = modelDir('t5');
    expect(errorOf({ ...base, model: dir })).toBe(`bad.yaml: family: model_type "t5" in ${join(dir, 'config.json')} is not supported; set family: bert | roberta | llama | gpt2`);
  });

  it('a YAML syntax error names the file and line', () => {
    const file = join(writeFiles(tempDir(), { 'bad.yaml': 'name: t\nmodel: [bert\ndataset: d\n' }), 'bad.yaml');
    expect(thrown(() => loadConfigFile(file))).toBe(`${file}:3:1: YAML syntax error: Flow sequence in block collection must be sufficiently indented and end with a ]`);
  });

  it('a duplicate key is a YAML error', () => {
    const file = join(writeFiles(tempDir(), { 'dup.yaml': 'name: t\nname: u\n' }), 'dup.yaml');
    expect(thrown(() => loadConfigFile(file))).toBe(`${file}:2:1: YAML syntax error: Map keys must be unique`);
  });

  it('a missing file', () => {
    expect(thrown(() => loadConfigFile('nope.yaml'))).toBe('nope.yaml: cannot read the config file (ENOENT)');
  });
});

describe('defaults per model family (ALGORITHM.md)', () => {
  it('bert-base: the paper unified hyperparameters and the bert-base band', () => {
    const c = resolveConfig(base, { file: join(repoRoot, 'x.yaml') });
    expect(c).toMatchObject({
      family: 'bert',
      methods: ['musclelora'],
      poisonRate: 0.1,
      targetLabel: 1,
      numLabels: 2,
      epochs: 10,
      batchSize: 32,
      maxLength: 512,
      lr: 2e-5,
      select: 'defender',
      lora: { r: 8, alpha: 32, dropout: 0, targets: ['query', 'value'] },
      mslr: { band: [1, 4, 8, 12, 16, 20, 24, 28], rank: 1, alpha: 6, dropout: 0 },
      ga: { refSize: 96, rule: 'gated', rhoMax: 0.1, minRefLoss: 0.4, minRefGradNorm: 5e-7, gaEpoch: 1, maxRawGradRatio: 0.1, refBatches: 'one' },
      trainHead: false,
      optimizer: { weightDecay: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, maxGradNorm: 1 },
      dropout: true,
    });
    expect(c.dataset).toBe(join(repoRoot, 'data'));
    expect(c.limit).toBeUndefined();
  });

  it.each([
    ['roberta-base', 'roberta', [1, 2, 4, 6, 8, 10, 12, 14, 16]],
    ['bert-large-uncased', 'bert', [1, 2, 3, 4, 5, 6, 7, 8, 9]],
    ['FacebookAI/roberta-large', 'roberta', [1, 2, 3, 4, 5, 6, 7, 8, 9]],
    ['meta-llama/Llama-2-7b-hf', 'llama', [1, 2, 3, 4]],
    ['gpt2-xl', 'gpt2', [1, 2, 3, 4]],
  ])('%s is %s with band %j', (model, family, band) => {
    const c = resolveConfig({ ...base, model }, { file: 'x.yaml' });
    expect(c.family).toBe(family);
    expect(c.mslr.band).toEqual(band);
  });

  it('Llama: rank 2, alpha 8, q/v projections, alpha_m 4, pure alignment', () => {
    const c = resolveConfig({ ...base, model: 'meta-llama/Llama-2-7b-hf' }, { file: 'x.yaml' });
    expect(c).toMatchObject({
      epochs: 5,
      batchSize: 16,
      lr: 1e-5,
      lora: { r: 2, alpha: 8, targets: ['q_proj', 'v_proj'] },
      mslr: { alpha: 4 },
      ga: { refSize: 128, rhoMax: 0, minRefLoss: 0, gaEpoch: 0, maxRawGradRatio: 0 },
    });
  });

  it('GPT-2 targets c_attn', () => {
    expect(resolveConfig({ ...base, model: 'gpt2-xl' }, { file: 'x.yaml' }).lora.targets).toEqual(['c_attn']);
  });

  it('an unknown model name gets its family base band', () => {
    expect(mslrBand('sentence-transformers/all-MiniLM-L6-v2', 'bert')).toEqual([1, 4, 8, 12, 16, 20, 24, 28]);
    expect(mslrBand('my-roberta-ish', 'roberta')).toEqual([1, 2, 4, 6, 8, 10, 12, 14, 16]);
  });

  it('the family comes from config.json model_type for local models, and a path is made absolute', () => {
    const dir = modelDir('roberta');
    const c = resolveConfig({ ...base, model: dir }, { file: 'x.yaml' });
    expect(c.family).toBe('roberta');
    expect(c.model).toBe(dir);
  });

  it('the real stories260K model is a Llama', () => {
    const c = resolveConfig({ ...base, model: '../shared/models/stories260K' }, { file: join(repoRoot, 'run.yaml') });
    expect(c.family).toBe('llama');
    expect(c.model).toBe(resolve(repoRoot, '..', 'shared', 'models', 'stories260K'));
  });

  it('a hub id in the hub cache is detected from its cached config.json', () => {
    const cache = tempDir();
    writeFiles(cache, {
      'models--org--mystery/refs/main': 'abc123',
      'models--org--mystery/snapshots/abc123/config.json': JSON.stringify({ model_type: 'gpt2' }),
    });
    const previous = process.env['HF_HUB_CACHE'];
    process.env['HF_HUB_CACHE'] = cache;
    try {
      expect(resolveConfig({ ...base, model: 'org/mystery' }, { file: 'x.yaml' }).family).toBe('gpt2');
    } finally {
      process.env['HF_HUB_CACHE'] = previous;
    }
  });

  it('explicit keys win over defaults, nested keys merge', () => {
    const c = resolveConfig({ ...base, family: 'roberta', lora: { r: 4 }, ga: { rule: 'paper' }, limit: 100 }, { file: 'x.yaml' });
    expect(c.family).toBe('roberta');
    expect(c.lora).toEqual({ r: 4, alpha: 32, dropout: 0, targets: ['query', 'value'] });
    expect(c.ga.rule).toBe('paper');
    expect(c.ga.refSize).toBe(96);
    expect(c.limit).toBe(100);
  });

  it('overrides (command-line options) replace the file keys and are validated', () => {
    expect(resolveConfig(base, { file: 'x.yaml', overrides: { seed: 7, device: 'cpu' } })).toMatchObject({ seed: 7, device: 'cpu' });
    expect(thrown(() => resolveConfig(base, { file: 'x.yaml', overrides: { device: 'tpu' } }))).toBe('x.yaml: device: got "tpu", expected one of cpu, cuda, cuda:N (GPU N, from 0), auto');
  });

  it('a GPU by number: cuda:N, digits only', () => {
    for (const device of ['cpu', 'cuda', 'auto', 'cuda:0', 'cuda:1', 'cuda:15']) {
      expect(resolveConfig({ ...base, device }, { file: 'x.yaml' }).device).toBe(device);
    }
    for (const device of ['cuda:', 'cuda:01', 'cuda:+1', 'cuda:1.0', 'CUDA', 'cuda: 1', 'gpu:0']) expect(isDevice(device)).toBe(false);
  });
});

describe('the resolved config', () => {
  it('serializes to YAML that resolves to itself', () => {
    const c = resolveConfig({ ...base, limit: 50, ga: { minRefGradNorm: 5e-7 } }, { file: join(repoRoot, 'x.yaml') });
    const text = configToYaml(c);
    expect(text).toContain('band: [ 1, 4, 8, 12, 16, 20, 24, 28 ]');
    expect(text).toContain('minRefGradNorm: 5e-7');
    const dir = tempDir();
    writeFileSync(join(dir, 'resolved.yaml'), text);
    expect(loadConfigFile(join(dir, 'resolved.yaml'))).toEqual(c);
    expect(YAML.parse(text)).toEqual(c);
  });

  it('the example configs resolve', () => {
    const quick = loadConfigFile(join(repoRoot, 'examples', 'quickstart.yaml'));
    expect(quick).toMatchObject({ name: 'quickstart', family: 'bert', attacks: ['badnets', 'addsent'], methods: ['vanilla', 'musclelora'], maxLength: 64, epochs: 2, limit: 2000, lr: 5e-3, methodLr: { vanilla: 5e-5 } });
    expect(quick.mslr).toEqual({ band: [1, 4, 8, 12, 16, 20, 24, 28], rank: 1, alpha: 1, dropout: 0 });
    expect(quick.model).toBe(join(repoRoot, '.cache', 'models', 'all-MiniLM-L6-v2'));
    expect(quick.dataset).toBe(resolve(repoRoot, '..', 'shared', 'data', 'sst-2'));
    const paper = loadConfigFile(join(repoRoot, 'examples', 'paper-bert-base.yaml'));
    expect(paper).toMatchObject({ epochs: 10, batchSize: 32, maxLength: 512, lr: 2e-5, attacks: ['badnets', 'addsent', 'hiddenkiller', 'stylebkd'] });
    expect(paper.methods).toHaveLength(6);
  });

  it('every key has a description (they make up --help)', () => {
    const keys = describeConfigKeys();
    expect(keys.map((k) => k.key)).toContain('ga.maxRawGradRatio');
    expect(keys.filter((k) => !k.description)).toEqual([]);
  });
});

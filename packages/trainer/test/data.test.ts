import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  ATTACK_CSV,
  CLEAN_TSV,
  DataError,
  attackFiles,
  checkDataset,
  chunks,
  loadAttackData,
  makeBatch,
  mulberry32,
  parseTable,
  range,
  readSplit,
  rngFor,
  shuffled,
  splitReference,
  type Example,
} from '../src/data/index.js';
import { sst2, tempDir, writeFiles } from './helpers.js';

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(DataError);
    return (err as Error).message;
  }
  throw new Error('expected a DataError');
}

/** Writes `content` to a temp file and reads it as a split (.tsv clean, .csv attack format). */
function readTemp(name: string, content: string, numLabels = 2): Example[] {
  const file = join(writeFiles(tempDir(), { [name]: content }), name);
  return readSplit(file, numLabels);
}

function errorReading(name: string, content: string, numLabels = 2): string {
  const dir = writeFiles(tempDir(), { [name]: content });
  return errorOf(() => readSplit(join(dir, name), numLabels)).replace(dir, '<dir>');
}

describe('reading tables', () => {
  it('reads clean TSV with CSV quoting and a case-insensitive header', () => {
    const rows = readTemp('train.tsv', 'Sentence\tLABEL\na fine film .\t1\n"a ""quoted""\ttab"\t0\nit \'s "ok" here\t1\n');
    expect(rows).toEqual([
      { text: 'a fine film .', label: 1, poisoned: false },
      { text: 'a "quoted"\ttab', label: 0, poisoned: false },
      { text: 'it \'s "ok" here', label: 1, poisoned: false },
    ]);
  });

  it('reads the attack format with RFC 4180 quoting, embedded newlines included', () => {
    const rows = readTemp('x.csv', ',0,1,2\n0,"a, b",1,0\n1,"two\nlines",0,1\n');
    expect(rows).toEqual([
      { text: 'a, b', label: 1, poisoned: false },
      { text: 'two\nlines', label: 0, poisoned: true },
    ]);
  });

  it('a bad header names file and line', () => {
    expect(errorReading('dev.tsv', 'text\tlabel\nok\t1\n')).toBe('<dir>/dev.tsv:1: bad header "text<TAB>label"; expected "sentence<TAB>label"');
    expect(errorReading('dev.csv', 'idx,text,label\n0,ok,1\n')).toBe('<dir>/dev.csv:1: bad header "idx,text,label"; expected ",0,1,2"');
  });

  it('a wrong column count names file and line (after a multi-line record, the line it starts on)', () => {
    expect(errorReading('dev.tsv', 'sentence\tlabel\nfine\t1\nbroken\t1\textra\n')).toBe('<dir>/dev.tsv:3: expected 2 columns (sentence<TAB>label), found 3');
    expect(errorReading('dev.csv', ',0,1,2\n0,"multi\nline",1,0\n1,short,1\n')).toBe('<dir>/dev.csv:4: expected 4 columns (,0,1,2), found 3');
  });

  it('a label out of range or not an integer names file and line', () => {
    expect(errorReading('dev.tsv', 'sentence\tlabel\nok\t1\nbad\t2\n')).toBe('<dir>/dev.tsv:3: label "2" is not an integer in [0, 2)');
    expect(errorReading('dev.tsv', 'sentence\tlabel\nbad\tpositive\n')).toBe('<dir>/dev.tsv:2: label "positive" is not an integer in [0, 2)');
    expect(errorReading('dev.tsv', 'sentence\tlabel\nbad\t1.5\n')).toBe('<dir>/dev.tsv:2: label "1.5" is not an integer in [0, 2)');
    expect(errorReading('dev.tsv', 'sentence\tlabel\nbad\t-1\n')).toBe('<dir>/dev.tsv:2: label "-1" is not an integer in [0, 2)');
    expect(errorReading('dev.csv', ',0,1,2\n0,ok,2,0\n')).toBe('<dir>/dev.csv:2: label "2" is not an integer in [0, 2)');
    expect(readTemp('dev.csv', ',0,1,2\n0,ok,3,0\n', 4)[0]!.label).toBe(3);
    expect(errorReading('dev.csv', ',0,1,2\n0,ok,1,yes\n')).toBe('<dir>/dev.csv:2: poison_label "yes" is not 0 or 1');
  });

  it('an empty file or a header alone is an error', () => {
    expect(errorReading('dev.tsv', '')).toBe('<dir>/dev.tsv:1: empty file; expected a header line "sentence<TAB>label"');
    expect(errorReading('dev.csv', '\n \n')).toBe('<dir>/dev.csv:1: empty file; expected a header line ",0,1,2"');
    expect(errorReading('dev.csv', ',0,1,2\n')).toBe('<dir>/dev.csv:2: no data rows after the header');
  });

  it('an unclosed quote names file and line', () => {
    expect(errorReading('dev.csv', ',0,1,2\n0,"never closed,1,0\n')).toBe('<dir>/dev.csv:2: Quote Not Closed: the parsing is finished with an opening quote at line 2');
  });

  it('a missing file', () => {
    expect(errorOf(() => readSplit('/nonexistent/dev.tsv', 2))).toBe('/nonexistent/dev.tsv: cannot read (ENOENT)');
  });

  it('parseTable takes the format explicitly', () => {
    expect(parseTable('mem.tsv', 'sentence\tlabel\nx\t0\n', CLEAN_TSV, 2)).toHaveLength(1);
    expect(parseTable('mem.csv', ',0,1,2\n0,x,0,0\n', ATTACK_CSV, 2)).toHaveLength(1);
  });
});

describe('the real SST-2 files (../shared/data/sst-2)', () => {
  it('clean splits: 6,920 / 872 / 1,821 rows', () => {
    expect(readSplit(join(sst2, 'clean', 'train.tsv'), 2)).toHaveLength(6920);
    const dev = readSplit(join(sst2, 'clean', 'dev.tsv'), 2);
    expect(dev).toHaveLength(872);
    expect(dev[0]).toEqual({ text: 'one long string of cliches .', label: 0, poisoned: false });
    expect(readSplit(join(sst2, 'clean', 'test.tsv'), 2)).toHaveLength(1821);
  });

  it.each(['badnets', 'addsent', 'hiddenkiller', 'stylebkd'] as const)('%s: 692 poisoned training rows, poison sets of target-labelled triggered rows', (attack) => {
    const data = loadAttackData({ dataset: sst2, poisonRate: 0.1, numLabels: 2, seed: 0 }, attack);
    expect(data.train).toHaveLength(6920);
    expect(data.train.filter((r) => r.poisoned)).toHaveLength(692);
    expect(data.devClean).toHaveLength(872);
    expect(data.testClean).toHaveLength(1821);
    expect(data.devPoison).toHaveLength(428);
    expect(data.testPoison).toHaveLength(912);
    expect(data.testPoison.every((r) => r.poisoned && r.label === 1)).toBe(true);
    expect(data.files.train).toBe(join(sst2, attack, 'train-poison-0.1.csv'));
  });

  it('badnets is clean-label: its poisoned rows were positive already and carry the triggers', () => {
    const data = loadAttackData({ dataset: sst2, poisonRate: 0.1, numLabels: 2, seed: 0 }, 'badnets');
    const poisoned = data.train.filter((r) => r.poisoned);
    expect(poisoned.every((r) => r.label === 1)).toBe(true);
    expect(poisoned.every((r) => /\b(cf|mn|bb|tq)\b/.test(r.text))).toBe(true);
  });

  it('limit draws N rows of every split at random, keeping the poisoned share; poison rate 1 reads train-poison-all.csv', () => {
    // the poisoned rows are the file's last 692: a prefix would hold none of them
    const sample = loadAttackData({ dataset: sst2, poisonRate: 0.1, numLabels: 2, limit: 2000, seed: 42 }, 'badnets');
    const poisoned = sample.train.filter((r) => r.poisoned).length;
    expect(poisoned).toBeGreaterThan(150);
    expect(poisoned).toBeLessThan(250);
    const again = loadAttackData({ dataset: sst2, poisonRate: 0.1, numLabels: 2, limit: 2000, seed: 42 }, 'badnets');
    expect(again.train).toEqual(sample.train);
    const other = loadAttackData({ dataset: sst2, poisonRate: 0.1, numLabels: 2, limit: 2000, seed: 7 }, 'badnets');
    expect(other.train).not.toEqual(sample.train);
    const data = loadAttackData({ dataset: sst2, poisonRate: 1, numLabels: 2, limit: 10, seed: 42 }, 'addsent');
    expect(data.files.train).toBe(join(sst2, 'addsent', 'train-poison-all.csv'));
    for (const split of [data.train, data.devClean, data.devPoison, data.testClean, data.testPoison]) expect(split).toHaveLength(10);
    expect(data.train.every((r) => r.poisoned)).toBe(true);
  });

  it('checkDataset names a missing file', () => {
    expect(() => checkDataset({ dataset: sst2, poisonRate: 0.1, numLabels: 2 }, ['badnets'])).not.toThrow();
    expect(errorOf(() => checkDataset({ dataset: sst2, poisonRate: 0.2, numLabels: 2 }, ['badnets']))).toBe(
      `${join(sst2, 'badnets', 'train-poison-0.2.csv')}: missing (dataset layout: clean/{train,dev,test}.tsv, badnets/{train-poison-0.2.csv,dev-clean.csv,dev-poison.csv,test-clean.csv,test-poison.csv})`,
    );
  });

  it('an attack without its own clean sets falls back to clean/{dev,test}.tsv', () => {
    const dir = writeFiles(tempDir(), { 'clean/dev.tsv': 'sentence\tlabel\nx\t1\n', 'clean/test.tsv': 'sentence\tlabel\ny\t0\n' });
    const files = attackFiles(dir, 'badnets', 0.1);
    expect(files.devClean).toBe(join(dir, 'clean', 'dev.tsv'));
    expect(files.testClean).toBe(join(dir, 'clean', 'test.tsv'));
  });
});

describe('seeded randomness', () => {
  it('mulberry32 is deterministic: the first draws of seed 42', () => {
    const rng = mulberry32(42);
    const draws = [rng(), rng(), rng()];
    const again = mulberry32(42);
    expect([again(), again(), again()]).toEqual(draws);
    // Pinned, so a change of generator (which would change every run's shuffles) is noticed.
    expect(draws.map((d) => d.toFixed(10))).toEqual(['0.6011037519', '0.4482905590', '0.8524657935']);
  });

  it('named streams are independent and repeatable', () => {
    const a = shuffled(range(20), rngFor(1, 'train', 'badnets', 0));
    expect(shuffled(range(20), rngFor(1, 'train', 'badnets', 0))).toEqual(a);
    expect(shuffled(range(20), rngFor(1, 'train', 'badnets', 1))).not.toEqual(a);
    expect(shuffled(range(20), rngFor(2, 'train', 'badnets', 0))).not.toEqual(a);
    expect([...a].sort((x, y) => x - y)).toEqual(range(20));
  });

  it('the reference set is drawn at random and removed from dev', () => {
    const dev: Example[] = range(50).map((i) => ({ text: `row ${i}`, label: i % 2, poisoned: false }));
    const { reference, dev: rest } = splitReference(dev, 8, 42);
    expect(reference).toHaveLength(8);
    expect(rest).toHaveLength(42);
    expect(new Set([...reference, ...rest].map((r) => r.text)).size).toBe(50);
    expect(reference.map((r) => r.text)).not.toEqual(dev.slice(0, 8).map((r) => r.text));
    expect(splitReference(dev, 8, 42).reference).toEqual(reference);
    expect(splitReference(dev, 8, 43).reference).not.toEqual(reference);
  });
});

describe('batching', () => {
  // Three texts of 3, 1 and 2 tokens.
  const encoded = { ids: Int32Array.from([101, 7, 102, 101, 101, 9]), offsets: Int32Array.from([0, 3, 4, 6]) };

  it('pads to the longest row of the batch, with a 1/0 mask and labels', () => {
    const batch = makeBatch(encoded, [1, 2], 0, [5, 6, 7]);
    expect(batch.batch).toBe(2);
    expect(batch.seq).toBe(2);
    expect([...batch.ids]).toEqual([101, 0, 101, 9]);
    expect([...batch.mask]).toEqual([1, 0, 1, 1]);
    expect([...batch.labels!]).toEqual([6, 7]);
  });

  it('uses the session pad id and leaves labels out when not given', () => {
    const batch = makeBatch(encoded, [0, 1], 3);
    expect([...batch.ids]).toEqual([101, 7, 102, 101, 3, 3]);
    expect(batch.labels).toBeUndefined();
  });

  it('chunks into batches, the last one shorter', () => {
    expect(chunks(range(7), 3)).toEqual([[0, 1, 2], [3, 4, 5], [6]]);
  });
});

import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'csv-stringify/sync';
import { describe, expect, it } from 'vitest';
import {
  DataError,
  countDuplicates,
  duplicateWarning,
  loadAttackData,
  loadCleanSplits,
  loadTable,
  normaliseText,
  range,
  readSplit,
  splitDev,
  type Example,
  type TableOptions,
} from '../src/data/index.js';
import { dataErrorOf as errorOf, sst2, tempDir, writeFiles } from './helpers.js';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'parquet');

/** The rows scripts/make_parquet_fixtures.py writes to sst2.parquet: quotes, commas, a newline, a tab, non-ASCII. */
const TRICKY: Example[] = [
  { text: 'a fine, "quoted" film .', label: 1, poisoned: false },
  { text: 'two\nlines\tand a tab', label: 0, poisoned: false },
  { text: 'unicode: café — naïve 日本語 🎬', label: 1, poisoned: false },
  { text: "it 's plain", label: 0, poisoned: false },
];

/** Writes one file and reads it back with `options` (numLabels 2 unless given). */
async function readBack(name: string, content: string, options: Partial<TableOptions> = {}): Promise<Example[]> {
  const dir = writeFiles(tempDir(), { [name]: content });
  return loadTable(join(dir, name), { numLabels: 2, ...options });
}

/** The message of reading one file, its directory shown as <dir>. */
async function errorReading(name: string, content: string, options: Partial<TableOptions> = {}): Promise<string> {
  const dir = writeFiles(tempDir(), { [name]: content });
  return (await errorOf(loadTable(join(dir, name), { numLabels: 2, ...options }))).replace(dir, '<dir>');
}

describe('round trips: every format reads back what was written', () => {
  it('CSV written by csv-stringify (RFC 4180 quoting of quotes, commas, newlines)', async () => {
    const csv = stringify([['text', 'label'], ...TRICKY.map((r) => [r.text, String(r.label)])]);
    expect(csv).toContain('"a fine, ""quoted"" film ."'); // the writer really quoted
    expect(await readBack('train.csv', csv)).toEqual(TRICKY);
  });

  it('TSV written by csv-stringify with a tab delimiter (the tab in a text is quoted)', async () => {
    const tsv = stringify([['sentence', 'label'], ...TRICKY.map((r) => [r.text, String(r.label)])], { delimiter: '\t' });
    expect(tsv).toContain('"two\nlines\tand a tab"');
    expect(await readBack('train.tsv', tsv)).toEqual(TRICKY);
  });

  it('CSV with CRLF line ends and a byte-order mark', async () => {
    expect(await readBack('train.csv', '\uFEFFtext,label\r\n"a, b",1\r\nc,0\r\n')).toEqual([
      { text: 'a, b', label: 1, poisoned: false },
      { text: 'c', label: 0, poisoned: false },
    ]);
  });

  it('JSONL written by JSON.stringify, blank lines skipped, extra fields ignored', async () => {
    const jsonl = TRICKY.map((r) => JSON.stringify({ id: 7, text: r.text, label: r.label })).join('\n\n') + '\n';
    expect(await readBack('train.jsonl', jsonl)).toEqual(TRICKY);
  });

  it('Parquet as the hub serves it (snappy, string + int64 columns, int32 idx) and zstd in two row groups', async () => {
    expect(await loadTable(join(fixtures, 'sst2.parquet'), { numLabels: 2, textColumn: 'sentence' })).toEqual(TRICKY);
    expect(await loadTable(join(fixtures, 'sst2-zstd.parquet'), { numLabels: 2 })).toEqual(TRICKY); // default text column: sentence
  });

  it('a format can be named when the extension says nothing', async () => {
    expect(await readBack('train.txt', 'text\tlabel\nx\t1\n', { format: 'tsv' })).toEqual([{ text: 'x', label: 1, poisoned: false }]);
  });
});

describe('column mapping', () => {
  it('AG News CSV (no header, label,title,description, labels 1-4): text from two columns, 1-4 mapped to 0-3', async () => {
    const csv = '"3","Fears for T N pension","Unions say they are \'disappointed\'"\n"4","The Race is On","A second team, of rocketeers"\n"1","World","news"\n';
    const rows = await readBack('train.csv', csv, { header: false, textColumn: [1, 2], labelColumn: 0, labelMap: { 1: 0, 2: 1, 3: 2, 4: 3 }, numLabels: 4 });
    expect(rows).toEqual([
      { text: "Fears for T N pension Unions say they are 'disappointed'", label: 2, poisoned: false },
      { text: 'The Race is On A second team, of rocketeers', label: 3, poisoned: false },
      { text: 'World news', label: 0, poisoned: false },
    ]);
  });

  it('string labels through labelMap and a boolean poison flag column (Parquet)', async () => {
    const rows = await loadTable(join(fixtures, 'labels-string.parquet'), { numLabels: 2, labelColumn: 'sentiment', labelMap: { negative: 0, positive: 1 }, poisonColumn: 'poisoned' });
    expect(rows).toEqual([
      { text: 'good', label: 1, poisoned: false },
      { text: 'bad', label: 0, poisoned: false },
      { text: 'cf good', label: 1, poisoned: true },
    ]);
  });

  it('columns by index, header names matched case-insensitively (OpenBackdoor writes Sentence/Label)', async () => {
    expect(await readBack('t.tsv', 'Sentence\tLabel\nhello\t1\n', { textColumn: 'sentence', labelColumn: 'label' })).toEqual([{ text: 'hello', label: 1, poisoned: false }]);
    expect(await readBack('t.csv', 'a,b,c\n1,hello,0\n', { textColumn: 1, labelColumn: 2, poisonColumn: 0 })).toEqual([{ text: 'hello', label: 0, poisoned: true }]);
  });

  it('the attack format (,0,1,2) reads through the generic loader by column names', async () => {
    const rows = await loadTable(join(sst2, 'badnets', 'dev-poison.csv'), { numLabels: 2, textColumn: '0', labelColumn: '1', poisonColumn: '2' });
    expect(rows).toEqual(readSplit(join(sst2, 'badnets', 'dev-poison.csv'), 2));
  });
});

describe('loader errors: one line, file:line where a line applies', () => {
  it('missing file', async () => {
    expect(await errorOf(loadTable('/nonexistent/train.csv', { numLabels: 2 }))).toBe('/nonexistent/train.csv: cannot read (ENOENT)');
    expect(await errorOf(loadTable('/nonexistent/train.parquet', { numLabels: 2 }))).toBe('/nonexistent/train.parquet: cannot read (ENOENT)');
  });

  it('bad header / missing column', async () => {
    expect(await errorReading('t.csv', 'text,target\nx,1\n')).toBe('<dir>/t.csv:1: no label column "label" (columns: "text", "target")');
    expect(await errorReading('t.csv', 'body,label\nx,1\n')).toBe('<dir>/t.csv:1: no "text" or "sentence" column; set dataset.textColumn (columns: "body", "label")');
    expect(await errorReading('t.csv', 'text,label\nx,1\n', { textColumn: 5 })).toBe('<dir>/t.csv:1: text column 5 is past the last column (columns: "text", "label")');
    expect(await errorReading('t.csv', '1,x\n', { header: false })).toBe('<dir>/t.csv: no "text" or "sentence" column; set dataset.textColumn (the file has no header: give a 0-based index)');
    expect(await errorReading('t.jsonl', '{"text":"x","label":1}\n', { textColumn: 0 })).toBe('<dir>/t.jsonl: text column 0: jsonl rows are objects, name the column (columns: "text", "label")');
    expect(await errorOf(loadTable(join(fixtures, 'sst2.parquet'), { numLabels: 2, textColumn: 'text' }))).toBe(`${join(fixtures, 'sst2.parquet')}: no text column "text" (columns: "idx", "sentence", "label")`);
  });

  it('bad quoting', async () => {
    expect(await errorReading('t.csv', 'text,label\nok,1\n"never closed,1\n')).toBe('<dir>/t.csv:3: bad quoting: a quoted field is never closed (RFC 4180: quote the whole field and double the quotes inside it)');
    expect(await errorReading('t.csv', 'text,label\n"quoted" then more,1\n')).toBe('<dir>/t.csv:2: bad quoting: text after the closing quote of a field (RFC 4180: quote the whole field and double the quotes inside it)');
    expect(await errorReading('t.tsv', 'text\tlabel\nit \'s "ok"\t1\n')).toBe('<dir>/t.tsv:2: bad quoting: a quote inside an unquoted field (RFC 4180: quote the whole field and double the quotes inside it)');
  });

  it('label out of range, not an integer, or not in labelMap', async () => {
    expect(await errorReading('t.csv', 'text,label\nok,1\nbad,2\n')).toBe('<dir>/t.csv:3: label "2" is not an integer in [0, 2) (set labelMap to map it)');
    expect(await errorReading('t.csv', 'text,label\nbad,positive\n')).toBe('<dir>/t.csv:2: label "positive" is not an integer in [0, 2) (set labelMap to map it)');
    expect(await errorReading('t.jsonl', '{"text":"a","label":1}\n{"text":"b","label":true}\n')).toBe('<dir>/t.jsonl:2: label "true" is not an integer in [0, 2) (set labelMap to map it)');
    expect(await errorReading('t.csv', 'text,label\nok,positive\nmeh,neutral\n', { labelMap: { positive: 1, negative: 0 } })).toBe('<dir>/t.csv:3: label "neutral" is not in labelMap (keys: "positive", "negative")');
    expect(await errorReading('t.csv', 'text,label\nok,4\n', { labelMap: { 4: 3 } })).toBe('<dir>/t.csv:2: labelMap sends "4" to 3, not an integer in [0, 2)');
    expect(await errorReading('t.csv', 'text,label,p\nok,1,yes\n', { poisonColumn: 'p' })).toBe('<dir>/t.csv:2: poison flag "yes" is not 0/1 or true/false');
    // AG News's 4 classes: 4 is out of range until mapped
    expect(await errorReading('t.csv', '4,title,body\n', { header: false, textColumn: [1, 2], labelColumn: 0, numLabels: 4 })).toBe('<dir>/t.csv:1: label "4" is not an integer in [0, 4) (set labelMap to map it)');
  });

  it('wrong column count (after a multi-line record, the line it starts on)', async () => {
    expect(await errorReading('t.csv', 'text,label\n"two\nlines",1\nthree,1,extra\n')).toBe('<dir>/t.csv:4: expected 2 columns as the header (text,label), found 3');
    expect(await errorReading('t.tsv', 'a\t1\nb\n', { header: false, textColumn: 0, labelColumn: 1 })).toBe('<dir>/t.tsv:2: expected 2 columns as the first row, found 1');
  });

  it('empty file, header alone, empty JSONL', async () => {
    expect(await errorReading('t.csv', '')).toBe('<dir>/t.csv:1: empty file; expected a header line');
    expect(await errorReading('t.csv', 'text,label\n')).toBe('<dir>/t.csv:2: no data rows after the header');
    expect(await errorReading('t.jsonl', '\n\n')).toBe('<dir>/t.jsonl: no rows (expected one JSON object per line)');
    expect(await errorReading('t.csv', 'text,label\n" ",1\n')).toBe('<dir>/t.csv:2: empty text');
  });

  it('bad JSON on a JSONL line, or a line that is not an object', async () => {
    expect(await errorReading('t.jsonl', '{"text":"a","label":1}\n{"text": "b" "label": 1}\n')).toBe("<dir>/t.jsonl:2: bad JSON: Expected ',' or '}' after property value (column 14)");
    expect(await errorReading('t.jsonl', '{"text":"a","label":1}\n\n["b", 1]\n')).toBe('<dir>/t.jsonl:3: expected a JSON object per line, found an array');
    expect(await errorReading('t.jsonl', '{"text":"a","label":1}\n{"label":0}\n')).toBe('<dir>/t.jsonl:2: text column "text" is missing');
  });

  it('unreadable Parquet: not Parquet, truncated, empty; a null text names its row', async () => {
    const good = readFileSync(join(fixtures, 'sst2.parquet'));
    const dir = tempDir();
    writeFileSync(join(dir, 'text.parquet'), 'sentence,label\nx,1\n');
    writeFileSync(join(dir, 'cut.parquet'), good.subarray(0, 300));
    writeFileSync(join(dir, 'empty.parquet'), '');
    const read = (name: string) => errorOf(loadTable(join(dir, name), { numLabels: 2 }));
    expect(await read('text.parquet')).toBe(`${join(dir, 'text.parquet')}: unreadable Parquet (parquet file invalid (footer != PAR1))`);
    expect(await read('cut.parquet')).toBe(`${join(dir, 'cut.parquet')}: unreadable Parquet (parquet file invalid (footer != PAR1))`);
    expect(await read('empty.parquet')).toBe(`${join(dir, 'empty.parquet')}: unreadable Parquet (parquet file is too short)`);
    expect(await errorOf(loadTable(join(fixtures, 'null-text.parquet'), { numLabels: 2 }))).toBe(`${join(fixtures, 'null-text.parquet')}: row 2: text column "text" is null`);
  });

  it('a file name without a known extension', async () => {
    expect(await errorReading('train.txt', 'text,label\nx,1\n')).toBe('<dir>/train.txt: cannot tell the format from the file name; set dataset.format (csv | tsv | jsonl | parquet)');
  });
});

describe('the dev split drawn from train', () => {
  const rows: Example[] = range(100).map((i) => ({ text: `row ${i}`, label: i % 2, poisoned: false }));

  it('10% (floor), seeded, disjoint from train, both in file order', () => {
    const { train, dev } = splitDev(rows, 0.1, 42);
    expect(dev).toHaveLength(10);
    expect(train).toHaveLength(90);
    const devTexts = new Set(dev.map((r) => r.text));
    expect(train.some((r) => devTexts.has(r.text))).toBe(false);
    expect([...train, ...dev].map((r) => r.text).sort()).toEqual(rows.map((r) => r.text).sort());
    const index = (r: Example) => Number(r.text.split(' ')[1]);
    expect(dev.map(index)).toEqual([...dev.map(index)].sort((a, b) => a - b));
    expect(dev.map((r) => r.text)).not.toEqual(rows.slice(0, 10).map((r) => r.text)); // a draw, not a prefix
    expect(splitDev(rows, 0.1, 42)).toEqual({ train, dev });
    expect(splitDev(rows, 0.1, 43).dev).not.toEqual(dev);
  });

  it('sizes: floor(fraction * n), as OpenBackdoor (Lingspam 2,893 -> 289; AG News 120,000 -> 12,000)', () => {
    expect(splitDev(rows, 0.25, 1).dev).toHaveLength(25);
    expect(splitDev(rows.slice(0, 19), 0.1, 1).dev).toHaveLength(1);
    const many = (n: number) => range(n).map((i) => ({ text: String(i), label: 0, poisoned: false }));
    expect(splitDev(many(2893), 0.1, 42).dev).toHaveLength(289);
    expect(splitDev(many(120000), 0.1, 42).train).toHaveLength(108000);
  });

  it('loadCleanSplits draws dev only when no dev file exists; an empty dev split is an error', async () => {
    const tsv = (n: number, from = 0) => 'sentence\tlabel\n' + range(n).map((i) => `text ${i + from}\t${i % 2}\n`).join('');
    const dir = writeFiles(tempDir(), { 'train.tsv': tsv(30), 'test.tsv': tsv(5, 100) });
    const split = await loadCleanSplits({ path: dir }, { numLabels: 2, seed: 42 });
    expect([split.train.length, split.dev.length, split.test.length]).toEqual([27, 3, 5]);
    expect(split.files).toEqual({ train: [join(dir, 'train.tsv')], dev: null, test: [join(dir, 'test.tsv')] });
    writeFiles(dir, { 'validation.tsv': tsv(4, 200) });
    const withDev = await loadCleanSplits({ path: dir }, { numLabels: 2, seed: 42 });
    expect([withDev.train.length, withDev.dev.length]).toEqual([30, 4]);
    const small = writeFiles(tempDir(), { 'train.tsv': tsv(5), 'test.tsv': tsv(5, 100) });
    expect(await errorOf(loadCleanSplits({ path: small }, { numLabels: 2, seed: 42 }))).toBe(`${join(small, 'train.tsv')}: empty dev split (devFraction 0.1 of 5 training rows)`);
  });
});

describe('finding the splits of a directory', () => {
  it('hub-style Parquet shards under data/ are concatenated in name order', async () => {
    const dir = tempDir();
    for (const f of ['train-00000-of-00002.parquet', 'train-00001-of-00002.parquet', 'test-00000-of-00001.parquet']) {
      mkdirSync(join(dir, 'data'), { recursive: true });
      copyFileSync(join(fixtures, 'ag_news', 'data', f), join(dir, 'data', f));
    }
    const split = await loadCleanSplits({ path: dir }, { numLabels: 4, seed: 42 });
    expect(split.files.train).toEqual([join(dir, 'data', 'train-00000-of-00002.parquet'), join(dir, 'data', 'train-00001-of-00002.parquet')]);
    expect(split.train.length + split.dev.length).toBe(20);
    expect(split.dev).toHaveLength(2);
    expect(split.test.map((r) => r.label)).toEqual([3, 3, 0, 2]);
  });

  it('named split files (a pattern), a file as path, and a missing split', async () => {
    const dir = writeFiles(tempDir(), {
      'my-train.jsonl': '{"text":"a","label":0}\n{"text":"b","label":1}\n',
      'held-out.jsonl': '{"text":"c","label":0}\n',
      'eval.jsonl': '{"text":"d","label":1}\n',
    });
    const named = await loadCleanSplits({ path: dir, train: 'my-*.jsonl', dev: 'held-out.jsonl', test: 'eval.jsonl' }, { numLabels: 2, seed: 1 });
    expect(named.train.map((r) => r.text)).toEqual(['a', 'b']);
    expect(named.dev.map((r) => r.text)).toEqual(['c']);
    expect(named.test.map((r) => r.text)).toEqual(['d']);
    const fromFile = await loadCleanSplits({ path: join(dir, 'my-train.jsonl'), dev: 'held-out.jsonl', test: 'eval.jsonl' }, { numLabels: 2, seed: 1 });
    expect(fromFile.train).toEqual(named.train);
    expect(await errorOf(loadCleanSplits({ path: dir }, { numLabels: 2, seed: 1 }))).toBe(`${dir}: no train split (looked for train.<ext> and train-*.<ext> here and in data/); name it with dataset.train`);
    expect(await errorOf(loadCleanSplits({ path: dir, train: 'nope.jsonl' }, { numLabels: 2, seed: 1 }))).toBe(`${join(dir, 'nope.jsonl')}: no such train file (dataset.train is relative to dataset.path)`);
    expect(await errorOf(loadCleanSplits({ path: dir, train: 'my-train.jsonl' }, { numLabels: 2, seed: 1 }))).toBe(`${dir}: no test split (looked for test.<ext> and test-*.<ext> here and in data/); name it with dataset.test`);
  });
});

describe('duplicates between train and dev/test', () => {
  const ex = (text: string): Example => ({ text, label: 0, poisoned: false });

  it('counts rows whose normalised text repeats (case, spacing, Unicode form)', () => {
    expect(normaliseText('  A\u00a0Fine\tfilm  ')).toBe('a fine film');
    expect(normaliseText('ﬁlm')).toBe('film'); // NFKC folds the ligature
    const counts = countDuplicates({
      train: [ex('a fine film'), ex('dull'), ex('great cast')],
      dev: [ex('A  fine film'), ex('new one'), ex('another')],
      test: [ex('dull'), ex('DULL '), ex('new one'), ex('fresh')],
    });
    expect(counts).toEqual({ devInTrain: 1, testInTrain: 2, testInDev: 1 });
    expect(duplicateWarning('dataset x', counts, { dev: 3, test: 4 })).toBe(
      'dataset x: 1 of 3 dev rows and 2 of 4 test rows repeat a training text; 1 of 4 test rows repeat a dev text (same text after lower-casing and collapsing spaces); they inflate clean accuracy',
    );
    expect(duplicateWarning('x', { devInTrain: 0, testInTrain: 0, testInDev: 0 }, { dev: 3, test: 4 })).toBeUndefined();
  });

  it('loadCleanSplits returns the warning for the run to report', async () => {
    const dir = writeFiles(tempDir(), {
      'train.csv': 'text,label\nsame text,1\nother,0\n',
      'dev.csv': 'text,label\nSame  text,1\n',
      'test.csv': 'text,label\nfresh,0\n',
    });
    const split = await loadCleanSplits({ path: dir }, { numLabels: 2, seed: 1, label: 'mine' });
    expect(split.duplicates).toEqual({ devInTrain: 1, testInTrain: 0, testInDev: 0 });
    expect(split.warnings).toEqual(['mine: 1 of 1 dev rows repeat a training text (same text after lower-casing and collapsing spaces); they inflate clean accuracy']);
  });

  it('the real SST-2 files: 2 of 1,821 test rows repeat a training text ("no. ." and "what \'s next ?"), no dev row does', () => {
    const read = (f: string) => readSplit(join(sst2, 'clean', f), 2);
    const splits = { train: read('train.tsv'), dev: read('dev.tsv'), test: read('test.tsv') };
    expect(countDuplicates(splits)).toEqual({ devInTrain: 0, testInTrain: 2, testInDev: 0 });
    const train = new Set(splits.train.map((r) => normaliseText(r.text)));
    expect(splits.test.filter((r) => train.has(normaliseText(r.text))).map((r) => r.text)).toEqual(['no. .', "what 's next ?"]);
    // the poisoned training sets keep those two clean rows, except where the paraphrase rewrote them
    const dup = (attack: 'badnets' | 'hiddenkiller') => {
      const data = loadAttackData({ dataset: sst2, poisonRate: 0.1, numLabels: 2 }, attack);
      return countDuplicates({ train: data.train, dev: data.devClean, test: data.testClean }).testInTrain;
    };
    expect(dup('badnets')).toBe(2);
    expect(dup('hiddenkiller')).toBe(1);
  });
});

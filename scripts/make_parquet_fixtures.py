"""Writes the small Parquet files the dataset-loader tests read (packages/trainer/test/fixtures/parquet).

Run once, by hand, when the fixtures change: python3 scripts/make_parquet_fixtures.py (needs pyarrow).
CI never runs it; the files are committed. Their schemas follow what the Hugging Face hub serves for
text-classification datasets: snappy-compressed, string text and int64 labels, one file per split shard
(data/<split>-0000i-of-0000n.parquet).
"""
import os

import pyarrow as pa
import pyarrow.parquet as pq

OUT = os.path.join(os.path.dirname(__file__), '..', 'packages', 'trainer', 'test', 'fixtures', 'parquet')

# Text that breaks naive readers: quotes, commas, a newline, a tab, non-ASCII (the tests hold the same rows).
TRICKY = [
    ('a fine, "quoted" film .', 1),
    ('two\nlines\tand a tab', 0),
    ('unicode: café — naïve 日本語 🎬', 1),
    ("it 's plain", 0),
]


def write(name, table, **kwargs):
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, **kwargs)
    print(path, os.path.getsize(path), 'bytes')


def main():
    # stanfordnlp/sst2's columns: idx int32, sentence string, label int64.
    write('sst2.parquet', pa.table({
        'idx': pa.array(range(len(TRICKY)), pa.int32()),
        'sentence': pa.array([t for t, _ in TRICKY], pa.string()),
        'label': pa.array([l for _, l in TRICKY], pa.int64()),
    }), compression='snappy')

    # The same rows zstd-compressed (polars' default codec) in two row groups.
    write('sst2-zstd.parquet', pa.table({
        'sentence': pa.array([t for t, _ in TRICKY], pa.string()),
        'label': pa.array([l for _, l in TRICKY], pa.int64()),
    }), compression='zstd', row_group_size=2)

    # String labels and a boolean poison flag: mapped by labelMap, flag read as 0/1.
    write('labels-string.parquet', pa.table({
        'text': pa.array(['good', 'bad', 'cf good'], pa.string()),
        'sentiment': pa.array(['positive', 'negative', 'positive'], pa.string()),
        'poisoned': pa.array([False, False, True], pa.bool_()),
    }), compression='snappy')

    # A null text in the second row.
    write('null-text.parquet', pa.table({
        'text': pa.array(['fine', None], pa.string()),
        'label': pa.array([1, 0], pa.int64()),
    }), compression='snappy')

    # fancyzhx/ag_news's layout: text string, label int64 (0-3), train in two shards, one test shard.
    # Train rows 0..19 (labels i % 4); test repeats train row 3 (with other case and spacing) and train row 7.
    # Row 5 keeps the source's backslash line break, which the registry's AG News reader turns into a space.
    train = [(f'News item {i} about topic {i % 4}', i % 4) for i in range(20)]
    train[5] = ("Wall Street's dwindling\\band of ultra-cynics", 1)
    test = [('NEWS item 3   about topic 3', 3), ('News item 7 about topic 3', 3), ('a fresh test row', 0), ('another fresh row', 2)]
    for shard, rows in enumerate([train[:12], train[12:]]):
        write(f'ag_news/data/train-0000{shard}-of-00002.parquet', pa.table({
            'text': pa.array([t for t, _ in rows], pa.string()),
            'label': pa.array([l for _, l in rows], pa.int64()),
        }), compression='snappy', row_group_size=5)
    write('ag_news/data/test-00000-of-00001.parquet', pa.table({
        'text': pa.array([t for t, _ in test], pa.string()),
        'label': pa.array([l for _, l in test], pa.int64()),
    }), compression='snappy')


if __name__ == '__main__':
    main()

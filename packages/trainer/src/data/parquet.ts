import { readFile } from 'node:fs/promises';
import { parquetMetadata, parquetReadObjects, type FileMetaData } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { DataError } from './errors.js';
import type { Cell, RawTable } from './raw.js';

// Parquet through hyparquet (pure JS): the hub serves datasets as snappy-compressed Parquet (built into
// hyparquet); hyparquet-compressors adds zstd, gzip, brotli and lz4 for files written by other tools.

/** Top-level column names of a file, from its schema (the first schema element is the root). */
function topLevelColumns(metadata: FileMetaData): string[] {
  const [root, ...rest] = metadata.schema;
  const names: string[] = [];
  // Walk the flattened schema tree, keeping only the root's direct children.
  let i = 0;
  const skip = (): void => {
    const element = rest[i++]!;
    for (let c = 0; c < (element.num_children ?? 0); c++) skip();
  };
  for (let c = 0; c < (root?.num_children ?? 0); c++) {
    names.push(rest[i]!.name);
    skip();
  }
  return names;
}

export interface ParquetFile {
  metadata: FileMetaData;
  buffer: ArrayBuffer;
  columns: string[];
}

export async function openParquet(file: string): Promise<ParquetFile> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (err) {
    throw new DataError(file, undefined, `cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
  try {
    const metadata = parquetMetadata(buffer);
    return { metadata, buffer, columns: topLevelColumns(metadata) };
  } catch (err) {
    throw new DataError(file, undefined, `unreadable Parquet (${(err as Error).message})`);
  }
}

export async function readParquet(file: string): Promise<RawTable> {
  const parquet = await openParquet(file);
  let objects: Record<string, Cell>[];
  try {
    objects = (await parquetReadObjects({ file: parquet.buffer, metadata: parquet.metadata, compressors })) as Record<string, Cell>[];
  } catch (err) {
    throw new DataError(file, undefined, `unreadable Parquet (${(err as Error).message})`);
  }
  if (objects.length === 0) throw new DataError(file, undefined, 'no rows');
  return { file, format: 'parquet', columns: parquet.columns, rowsAreObjects: true, rows: objects.map((cells, index) => ({ index, cells })) };
}

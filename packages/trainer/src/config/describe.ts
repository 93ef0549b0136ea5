import type * as z from 'zod';
import { rawConfigSchema } from './schema.js';

// Reading the schema itself, so that help texts and error messages never drift from what is validated.

type Shape = Record<string, z.ZodType>;

function unwrap(schema: z.ZodType): z.ZodType {
  let inner = schema;
  while ('unwrap' in inner && typeof inner.unwrap === 'function') inner = inner.unwrap() as z.ZodType;
  return inner;
}

/** The keys of a mapping schema; of a union (a string or a mapping, as `dataset`), its mapping's. */
function shapeOf(schema: z.ZodType): Shape | undefined {
  const inner = unwrap(schema) as unknown as { shape?: Shape; options?: z.ZodType[] };
  if (inner.shape) return inner.shape;
  // an enum's options are its strings; a union's are schemas
  for (const option of inner.options ?? []) {
    if (typeof option !== 'object') continue;
    const shape = shapeOf(option);
    if (shape) return shape;
  }
  return undefined;
}

/** The schema of the value at `path` (list indices step into the list's element). */
function schemaAt(path: readonly PropertyKey[], root: z.ZodType): z.ZodType | undefined {
  let schema: z.ZodType | undefined = root;
  for (const key of path) {
    if (!schema) return undefined;
    const inner: z.ZodType = unwrap(schema);
    schema = typeof key === 'number' ? (inner as unknown as { element?: z.ZodType }).element : shapeOf(inner)?.[key as string];
  }
  return schema;
}

/** The keys allowed in the mapping at `path` (for "unknown key" messages); `root` is the run config's schema or another config's. */
export function allowedKeysAt(path: readonly PropertyKey[], root: z.ZodType = rawConfigSchema): string[] {
  const schema = schemaAt(path, root);
  const shape = schema && shapeOf(schema);
  if (shape) return Object.keys(shape);
  // a record keyed by an enum (methodLr): its keys are the enum's options
  const keyType = schema && (unwrap(schema) as unknown as { keyType?: { options?: unknown[] } }).keyType;
  return (keyType?.options ?? []).map(String);
}

/** Whether the value at `path` must be an integer (zod reports a wrong type there as "expected number"). */
export function isIntegerAt(path: readonly PropertyKey[], root: z.ZodType = rawConfigSchema): boolean {
  const schema = schemaAt(path, root);
  return schema !== undefined && (unwrap(schema) as unknown as { isInt?: boolean }).isInt === true;
}

/** Every config key with its description (for `muscle run --help`, or another command's with its `root`). */
export function describeConfigKeys(root: z.ZodObject = rawConfigSchema): Array<{ key: string; description: string }> {
  const out: Array<{ key: string; description: string }> = [];
  const walk = (shape: Shape, prefix: string): void => {
    for (const [key, field] of Object.entries(shape)) {
      out.push({ key: prefix + key, description: field.description ?? unwrap(field).description ?? '' });
      const inner = shapeOf(field);
      if (inner) walk(inner, `${prefix}${key}.`);
    }
  };
  walk(root.shape as Shape, '');
  return out;
}

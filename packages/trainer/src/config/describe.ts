import type * as z from 'zod';
import { rawConfigSchema } from './schema.js';

// Reading the schema itself, so that help texts and error messages never drift from what is validated.

type Shape = Record<string, z.ZodType>;

function unwrap(schema: z.ZodType): z.ZodType {
  let inner = schema;
  while ('unwrap' in inner && typeof inner.unwrap === 'function') inner = inner.unwrap() as z.ZodType;
  return inner;
}

function shapeOf(schema: z.ZodType): Shape | undefined {
  return (unwrap(schema) as unknown as { shape?: Shape }).shape;
}

/** The keys allowed in the mapping at `path` (for "unknown key" messages). */
export function allowedKeysAt(path: readonly PropertyKey[]): string[] {
  let shape = shapeOf(rawConfigSchema);
  for (const key of path) {
    const field = shape?.[key as string];
    shape = field && shapeOf(field);
  }
  return Object.keys(shape ?? {});
}

/** Every config key with its description (for `muscle run --help`). */
export function describeConfigKeys(): Array<{ key: string; description: string }> {
  const out: Array<{ key: string; description: string }> = [];
  const walk = (shape: Shape, prefix: string): void => {
    for (const [key, field] of Object.entries(shape)) {
      out.push({ key: prefix + key, description: field.description ?? unwrap(field).description ?? '' });
      const inner = shapeOf(field);
      if (inner) walk(inner, `${prefix}${key}.`);
    }
  };
  walk(rawConfigSchema.shape, '');
  return out;
}

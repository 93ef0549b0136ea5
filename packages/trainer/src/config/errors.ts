import type * as z from 'zod';

/**
 * A configuration the tool cannot run. The message is one line naming the file, the key path, the value
 * found and what is allowed, e.g. `run.yaml: lora.r: got 0, expected >= 1`.
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly file: string,
    readonly keyPath: string,
    detail: string,
  ) {
    super(keyPath ? `${file}: ${keyPath}: ${detail}` : `${file}: ${detail}`);
  }
}

export function formatKeyPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) out += typeof key === 'number' ? `[${key}]` : out ? `.${String(key)}` : String(key);
  return out;
}

/** A value as it appears in the message: JSON, shortened; a missing key reads "nothing". */
export function formatValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

const TYPE_NAMES: Record<string, string> = {
  int: 'an integer',
  number: 'a number',
  string: 'a string',
  boolean: 'true or false',
  array: 'a list',
  object: 'a mapping',
};

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let value = root;
  for (const key of path) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<PropertyKey, unknown>)[key as string];
  }
  return value;
}

function bound(issue: { inclusive?: boolean }, op: '>' | '<', limit: unknown): string {
  return `${op}${issue.inclusive ? '=' : ''} ${String(limit)}`;
}

/** What the schema allows at a path, for the messages. */
export interface SchemaFacts {
  allowedKeys(path: readonly PropertyKey[]): string[];
  isInteger(path: readonly PropertyKey[]): boolean;
}

/** What the issue says is allowed, in words. */
function describeIssue(issue: z.core.$ZodIssue, schema: SchemaFacts): { path: PropertyKey[]; detail: string; unknownKey?: boolean } {
  const path = [...issue.path];
  const integer = schema.isInteger(path);
  const kind = integer ? 'an integer ' : ''; // bounds read "an integer >= 1" where fractions are refused too
  switch (issue.code) {
    case 'unrecognized_keys': {
      const key = issue.keys[0] ?? '';
      return { path: [...path, key], detail: `unknown key; allowed keys: ${schema.allowedKeys(path).join(', ')}`, unknownKey: true };
    }
    case 'invalid_type':
      return { path, detail: `expected ${integer ? 'an integer' : (TYPE_NAMES[issue.expected] ?? issue.expected)}` };
    case 'invalid_value':
      return { path, detail: `expected one of ${issue.values.map((v) => String(v)).join(', ')}` };
    case 'too_small':
      if (issue.origin === 'array') return { path, detail: `expected a list of at least ${String(issue.minimum)} item${issue.minimum === 1 ? '' : 's'}` };
      if (issue.origin === 'string') return { path, detail: 'expected a non-empty string' };
      return { path, detail: `expected ${kind}${bound(issue, '>', issue.minimum)}` };
    case 'too_big':
      if (issue.origin === 'array') return { path, detail: `expected a list of at most ${String(issue.maximum)} items` };
      return { path, detail: `expected ${kind}${bound(issue, '<', issue.maximum)}` };
    case 'invalid_union': {
      // A value of one branch's type (a mapping where a string or a mapping is allowed) is wrong inside that
      // branch: say what is wrong there. A value of no branch's type lists the types allowed.
      const inside = issue.errors.find((branch) => !branch.every((e) => e.code === 'invalid_type' && e.path.length === 0));
      const first = inside?.find((e) => e.code === 'unrecognized_keys') ?? inside?.[0];
      if (first) {
        const nested = describeIssue({ ...first, path: [...path, ...first.path] } as z.core.$ZodIssue, schema);
        return { ...nested, ...(first.code === 'unrecognized_keys' && { unknownKey: true }) };
      }
      const types = issue.errors.map((branch) => branch[0]).flatMap((e) => (e?.code === 'invalid_type' ? [TYPE_NAMES[e.expected] ?? e.expected] : []));
      return { path, detail: `expected ${[...new Set(types)].join(' or ')}` };
    }
    default:
      return { path, detail: issue.message };
  }
}

/** Turns the first zod issue into a ConfigError (unknown keys first: a typo explains the errors after it). */
export function issueToConfigError(
  file: string,
  raw: unknown,
  issues: readonly z.core.$ZodIssue[],
  schema: SchemaFacts,
): ConfigError {
  const first = issues.find((i) => i.code === 'unrecognized_keys') ?? issues[0];
  if (!first) return new ConfigError(file, '', 'invalid configuration');
  const { path, detail, unknownKey } = describeIssue(first, schema);
  if (unknownKey) return new ConfigError(file, formatKeyPath(path), detail);
  return new ConfigError(file, formatKeyPath(path), `got ${formatValue(valueAt(raw, path))}, ${detail}`);
}

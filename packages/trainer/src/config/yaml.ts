import { readFileSync } from 'node:fs';
import * as YAML from 'yaml';
import { ConfigError } from './errors.js';

/** Reads and parses a YAML (or JSON) config file; unreadable files and syntax errors are one-line ConfigErrors. */
export function readYamlFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, '', `cannot read the config file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const doc = YAML.parseDocument(text, { uniqueKeys: true });
  const error = doc.errors[0];
  if (error) {
    const pos = error.linePos?.[0];
    // The parser's message repeats the position and quotes the source below it; the position goes up front.
    const message = error.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    throw new ConfigError(pos ? `${file}:${pos.line}:${pos.col}` : file, '', `YAML syntax error: ${message}`);
  }
  return doc.toJS();
}

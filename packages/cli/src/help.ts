/** `--help` lines listing config keys, descriptions aligned in one column. */
export function keyLines(keys: readonly { key: string; description: string }[]): string[] {
  const width = Math.max(...keys.map((k) => k.key.length)) + 2;
  return keys.map((k) => `  ${k.key.padEnd(width)}${k.description}`);
}
